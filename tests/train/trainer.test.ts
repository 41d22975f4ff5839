// The fixture trainer's gradients on a tiny model (two windows) against central differences of a
// plain TypeScript reference of the whole model's mean next-token NLL; an AdamW step lowers it.
import assert from "node:assert/strict";
import { getGpu } from "../../src/gpu/device.ts";
import { type ModelConfig, ropeInvFreq } from "../../src/io/config.ts";
import { ropeTables } from "../../src/kernels/rope.ts";
import { transpose } from "../../src/util/matrix.ts";
import { initialWeights, Trainer } from "../../src/train/trainer.ts";
import { Rng } from "../../src/util/rng.ts";
import { blockRef, type BlockRefWeights, linearRef } from "../reference/block.ts";
import { rmsnormRef } from "../reference/norm.ts";
import { assertClose } from "../util.ts";

const cfg: ModelConfig = {
  modelType: "llama",
  hidden: 16,
  intermediate: 24,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  headDim: 4,
  vocab: 40,
  maxPositions: 64,
  ropeTheta: 10000,
  rmsNormEps: 1e-5,
  tieEmbeddings: false,
  ropeScaling: null,
  slidingWindow: null,
};
const T = 8;
const KINDS = ["q", "k", "v", "o", "gate", "up", "down"] as const;
const PROJ: Record<string, string> = {
  q: "self_attn.q_proj",
  k: "self_attn.k_proj",
  v: "self_attn.v_proj",
  o: "self_attn.o_proj",
  gate: "mlp.gate_proj",
  up: "mlp.up_proj",
  down: "mlp.down_proj",
};

/** Mean next-token NLL of the reference model over windows of T + 1 ids (f64 softmax). */
function refLoss(w: Map<string, Float32Array>, windows: Int32Array[]): number {
  const H = cfg.hidden, V = cfg.vocab;
  const rope = ropeTables(ropeInvFreq(cfg), T);
  const emb = w.get("model.embed_tokens.weight")!;
  const headT = transpose(w.get("lm_head.weight")!, V, H);
  let sum = 0, n = 0;
  for (const win of windows) {
    let x: Float32Array = new Float32Array(H * T);
    for (let t = 0; t < T; t++) for (let h = 0; h < H; h++) x[h * T + t] = emb[win[t] * H + h];
    for (let l = 0; l < cfg.layers; l++) {
      const p = `model.layers.${l}`;
      const b: BlockRefWeights = {
        hidden: H,
        intermediate: cfg.intermediate,
        heads: cfg.heads,
        kvHeads: cfg.kvHeads,
        headDim: cfg.headDim,
        eps: cfg.rmsNormEps,
        w: {} as BlockRefWeights["w"],
        inputNorm: w.get(`${p}.input_layernorm.weight`)!,
        postNorm: w.get(`${p}.post_attention_layernorm.weight`)!,
      };
      for (const k of KINDS) {
        const W = w.get(`${p}.${PROJ[k]}.weight`)!;
        const inDim = k === "o" ? cfg.heads * cfg.headDim : k === "down" ? cfg.intermediate : H;
        b.w[k] = transpose(W, W.length / inDim, inDim);
      }
      x = blockRef(b, x, T, rope.cos, rope.sin);
    }
    const h = rmsnormRef(x, w.get("model.norm.weight")!, H, T, cfg.rmsNormEps);
    const logits = linearRef(headT, h, H, V, T); // [V, T]
    for (let t = 0; t < T; t++) {
      let m = -Infinity;
      for (let v = 0; v < V; v++) m = Math.max(m, logits[v * T + t]);
      let s = 0;
      for (let v = 0; v < V; v++) s += Math.exp(logits[v * T + t] - m);
      sum += m + Math.log(s) - logits[win[t + 1] * T + t];
      n++;
    }
  }
  return sum / n;
}

Deno.test("trainer gradients match central differences of the reference model", async () => {
  const gpu = await getGpu();
  // Larger-than-init weights and non-unit norms so every path carries gradient.
  const weights = initialWeights(cfg, 7, 0.35);
  const rng = new Rng(8);
  for (const [name, w] of weights) {
    if (name.endsWith("norm.weight")) {
      for (let i = 0; i < w.length; i++) w[i] = 0.6 + rng.next();
    }
  }
  const windows = [0, 1].map(() => Int32Array.from({ length: T + 1 }, () => rng.int(cfg.vocab)));
  windows[1][3] = windows[1][5] = windows[0][2]; // repeated ids: embedding rows accumulate
  const tr = await Trainer.fromWeights(gpu, cfg, { seqlen: T, seed: 0 }, weights);
  try {
    const loss = await tr.computeGradients(windows);
    const want = refLoss(weights, windows);
    assertClose([loss], [want], 1e-5, 1e-5, "loss");

    const eps = 1e-3;
    const names = [
      "lm_head.weight",
      "model.embed_tokens.weight",
      "model.norm.weight",
      "model.layers.0.self_attn.q_proj.weight",
      "model.layers.1.mlp.down_proj.weight",
      "model.layers.0.input_layernorm.weight",
      "model.layers.1.post_attention_layernorm.weight",
    ];
    for (const name of names) {
      const grad = await tr.gradient(name);
      const base = weights.get(name)!;
      for (let r = 0; r < 2; r++) {
        const dir = new Float32Array(base.length).map(() => rng.next() * 2 - 1);
        const at = (sign: number) => {
          const w = new Map(weights);
          w.set(name, base.map((v, i) => v + sign * eps * dir[i]));
          return refLoss(w, windows);
        };
        const fd = (at(1) - at(-1)) / (2 * eps);
        let an = 0;
        for (let i = 0; i < dir.length; i++) an += grad[i] * dir[i];
        assertClose([an], [fd], 1e-4, 5e-3, `${name} directional derivative ${r}`);
      }
    }

    // The full gradient points downhill: a small step along -grad lowers the reference loss.
    const all = new Map<string, Float32Array>();
    let norm2 = 0;
    for (const name of weights.keys()) {
      const g = await tr.gradient(name);
      all.set(name, g);
      for (const v of g) norm2 += v * v;
    }
    const step = 1e-2 / Math.sqrt(norm2);
    const moved = new Map(
      [...weights].map(([k, w]) => [k, w.map((v, i) => v - step * all.get(k)![i])]),
    );
    const lower = refLoss(moved, windows);
    assert.ok(lower < want, `loss ${lower} after a step along -grad is not below ${want}`);
    // First-order prediction of the decrease.
    assertClose([want - lower], [step * norm2], 1e-6, 0.05, "first-order decrease");

    // An AdamW step through the GPU lowers the loss on the same windows.
    tr.applyUpdate(1e-2);
    const after = await tr.computeGradients(windows);
    assert.ok(after < loss, `loss ${after} after one AdamW step is not below ${loss}`);
  } finally {
    tr.release();
  }
});

Deno.test("trainer init is seeded", () => {
  const a = initialWeights(cfg, 3, 0.02), b = initialWeights(cfg, 3, 0.02);
  const c = initialWeights(cfg, 4, 0.02);
  for (const [name, w] of a) assert.deepEqual(w, b.get(name), name);
  assert.notDeepEqual(a.get("lm_head.weight"), c.get("lm_head.weight"));
  assert.ok(a.get("model.norm.weight")!.every((v) => v === 1));
});
