// Dense block backward over B windows side by side ([features, B * T] columns, attention within
// each window, positions restarting in every window) against central differences of the
// TypeScript block reference applied window by window: weights, input and norm weights. Run with
// the adapter's binding limit, with a small one that splits the heads into groups, and with the
// linears one window a dispatch (BlockScratch.linearCols).
import { getGpu, type Gpu } from "../../src/gpu/device.ts";
import { Tensor } from "../../src/gpu/tensor.ts";
import {
  LINEAR_KINDS,
  type LinearKind,
  type ModelConfig,
  ropeInvFreq,
} from "../../src/io/config.ts";
import { mseGrad } from "../../src/kernels/mse.ts";
import { ropeTables } from "../../src/kernels/rope.ts";
import { backwardBlock, BackwardScratch } from "../../src/model/backward.ts";
import { BlockScratch, forwardBlock } from "../../src/model/block.ts";
import { linearOf } from "../../src/model/weights.ts";
import { transpose } from "../../src/util/matrix.ts";
import { Rng } from "../../src/util/rng.ts";
import { blockRef, type BlockRefWeights } from "../reference/block.ts";
import { assertClose, randomF32, withMaxBinding } from "../util.ts";

const cfg: ModelConfig = {
  modelType: "llama",
  hidden: 12,
  intermediate: 8,
  layers: 1,
  heads: 6,
  kvHeads: 3,
  headDim: 4,
  vocab: 32,
  maxPositions: 64,
  ropeTheta: 10000,
  rmsNormEps: 1e-5,
  tieEmbeddings: true,
  ropeScaling: null,
  slidingWindow: null,
};
const T = 16, B = 3, N = B * T, H = cfg.hidden;

/** Window w of a [rows, B * T] array as [rows, T]. */
function windowOf(x: Float32Array, rows: number, w: number): Float32Array {
  const out = new Float32Array(rows * T);
  for (let r = 0; r < rows; r++) out.set(x.subarray(r * N + w * T, r * N + (w + 1) * T), r * T);
  return out;
}

async function check(
  gpu: Gpu,
  label: string,
  wantGroup: (g: number) => boolean,
  linearCols?: number,
) {
  const ref: BlockRefWeights = {
    hidden: H,
    intermediate: cfg.intermediate,
    heads: cfg.heads,
    kvHeads: cfg.kvHeads,
    headDim: cfg.headDim,
    eps: cfg.rmsNormEps,
    w: {} as BlockRefWeights["w"],
    inputNorm: randomF32(H, 1, 0.5, 1.5),
    postNorm: randomF32(H, 2, 0.5, 1.5),
  };
  const wT = {} as Record<LinearKind, Tensor>, w = {} as Record<LinearKind, Tensor>;
  LINEAR_KINDS.forEach((kind, i) => {
    const l = linearOf(cfg, 0, kind);
    const sc = 1.5 / Math.sqrt(l.in);
    ref.w[kind] = randomF32(l.in * l.out, 10 + i, -sc, sc);
  });
  for (const kind of LINEAR_KINDS) {
    const l = linearOf(cfg, 0, kind);
    wT[kind] = await Tensor.from(gpu, ref.w[kind], [l.in, l.out], kind);
    w[kind] = await Tensor.from(gpu, transpose(ref.w[kind], l.in, l.out), [l.out, l.in], kind);
  }
  const rope = ropeTables(ropeInvFreq(cfg), T);
  const x = randomF32(H * N, 3, -2, 2), target = randomF32(H * N, 4, -2, 2);
  const block = {
    layer: 0,
    w: wT,
    inputNorm: await Tensor.from(gpu, ref.inputNorm, [H], "in"),
    postNorm: await Tensor.from(gpu, ref.postNorm, [H], "post"),
  };
  const s = await BlockScratch.create(gpu, cfg, B, T, rope, { linearCols });
  if (!wantGroup(s.headGroup)) throw new Error(`${label}: head group ${s.headGroup}`);
  const e = (shape: number[]) => Tensor.empty(gpu, shape, "t");
  const keep = { xIn: e([H, N]), h1: e([H, N]), x2: e([H, N]), g: e([cfg.intermediate, N]) };
  const bs = new BackwardScratch(gpu, cfg, T, s.headGroup, B);
  const y = await Tensor.from(gpu, x, [H, N], "y");
  const tt = await Tensor.from(gpu, target, [H, N], "target");
  const dy = e([H, N]), sq = e([N]), dx = e([H, N]), dIn = e([H]), dPost = e([H]);
  forwardBlock(gpu, block, y, s, keep);
  // The forward over the batch equals the reference window by window.
  const out = await y.toF32();
  for (let k = 0; k < B; k++) {
    const want = blockRef(ref, windowOf(x, H, k), T, rope.cos, rope.sin);
    assertClose(windowOf(out, H, k), want, 1e-5, 1e-4, `${label} forward window ${k}`);
  }
  mseGrad(gpu, y.all, tt.all, dy.all, sq.all, H, N, 2 / (H * N));
  const grads = new Map<LinearKind, Tensor>();
  for (const kind of LINEAR_KINDS) grads.set(kind, e([wT[kind].size]));
  backwardBlock(gpu, block, s, keep, bs, dy, {
    w,
    dx,
    dInputNorm: dIn,
    dPostNorm: dPost,
    onWeightGrad: (kind, r) => gpu.copy(r.buffer, 0, grads.get(kind)!.buffer, 0, r.size!),
  });
  // The mean squared error over every window.
  const loss = (b: BlockRefWeights, xin: Float32Array) => {
    let acc = 0;
    for (let k = 0; k < B; k++) {
      const o = blockRef(b, windowOf(xin, H, k), T, rope.cos, rope.sin);
      const t = windowOf(target, H, k);
      for (let i = 0; i < o.length; i++) acc += (o[i] - t[i]) ** 2;
    }
    return acc / (H * N);
  };
  const rng = new Rng(5);
  const eps = 1e-3;
  const fd = async (
    name: string,
    g: Tensor,
    base: Float32Array,
    set: (v: Float32Array) => number,
  ) => {
    const grad = await g.toF32();
    for (let r = 0; r < 2; r++) {
      const dir = new Float32Array(base.length).map(() => rng.next() * 2 - 1);
      const plus = set(base.map((v, i) => v + eps * dir[i]));
      const minus = set(base.map((v, i) => v - eps * dir[i]));
      let an = 0;
      for (let i = 0; i < dir.length; i++) an += grad[i] * dir[i];
      assertClose([an], [(plus - minus) / (2 * eps)], 2e-5, 2e-3, `${label} ${name} ${r}`);
    }
  };
  for (const kind of LINEAR_KINDS) {
    await fd(
      `dW^T ${kind}`,
      grads.get(kind)!,
      ref.w[kind],
      (v) => loss({ ...ref, w: { ...ref.w, [kind]: v } }, x),
    );
  }
  await fd("dx", dx, x, (v) => loss(ref, v));
  await fd("d input_norm", dIn, ref.inputNorm, (v) => loss({ ...ref, inputNorm: v }, x));
  await fd("d post_norm", dPost, ref.postNorm, (v) => loss({ ...ref, postNorm: v }, x));
  const all = [y, tt, dy, sq, dx, dIn, dPost, ...grads.values(), ...Object.values(keep)];
  for (const t of [...all, ...Object.values(wT), ...Object.values(w)]) t.release();
  bs.release();
  s.release();
}

Deno.test("block backward over 3 windows side by side matches finite differences", async () => {
  const gpu = await getGpu();
  await check(gpu, "all heads", (g) => g === cfg.heads);
  // [qDim, N] floats per binding: scores of 4 heads, then 2 (the MLP still in one chunk).
  const qDim = cfg.heads * cfg.headDim;
  await check(withMaxBinding(gpu, qDim * N * 4), "head groups of 4", (g) => g === 4);
  // Dense linears one window (T columns) a dispatch, as finetuning runs them.
  await check(gpu, "linears per window", (g) => g === cfg.heads, T);
});

Deno.test("backwardBlock refuses scratches for different windows", async () => {
  const gpu = await getGpu();
  const rope = ropeTables(ropeInvFreq(cfg), T);
  const s = await BlockScratch.create(gpu, cfg, B, T, rope);
  const bs = new BackwardScratch(gpu, cfg, T, s.headGroup, 1);
  const t = Tensor.empty(gpu, [H, N], "t");
  try {
    let msg = "";
    try {
      backwardBlock(gpu, {} as never, s, {} as never, bs, t, {
        w: {} as never,
        onWeightGrad: () => {},
      });
    } catch (e) {
      msg = (e as Error).message;
    }
    if (!msg.includes("scratches disagree")) throw new Error(`no refusal: "${msg}"`);
  } finally {
    t.release();
    bs.release();
    s.release();
  }
});
