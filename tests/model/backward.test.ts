// Dense block backward (weights, input and norm weights) against central differences of the
// TypeScript block reference.
import { getGpu } from "../../src/gpu/device.ts";
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
import { assertClose, randomF32 } from "../util.ts";

const cfg: ModelConfig = {
  modelType: "llama",
  hidden: 12,
  intermediate: 20,
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

Deno.test("dense block backward matches finite differences for weights, input and norms", async () => {
  const gpu = await getGpu();
  const T = 7;
  const ref: BlockRefWeights = {
    hidden: cfg.hidden,
    intermediate: cfg.intermediate,
    heads: cfg.heads,
    kvHeads: cfg.kvHeads,
    headDim: cfg.headDim,
    eps: cfg.rmsNormEps,
    w: {} as BlockRefWeights["w"],
    inputNorm: randomF32(cfg.hidden, 1, 0.5, 1.5),
    postNorm: randomF32(cfg.hidden, 2, 0.5, 1.5),
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
  const x = randomF32(cfg.hidden * T, 3, -2, 2), target = randomF32(cfg.hidden * T, 4, -2, 2);
  const block = {
    layer: 0,
    w: wT,
    inputNorm: await Tensor.from(gpu, ref.inputNorm, [cfg.hidden], "in"),
    postNorm: await Tensor.from(gpu, ref.postNorm, [cfg.hidden], "post"),
  };
  const s = await BlockScratch.create(gpu, cfg, 1, T, rope);
  const e = (shape: number[]) => Tensor.empty(gpu, shape, "t");
  const keep = {
    xIn: e([cfg.hidden, T]),
    h1: e([cfg.hidden, T]),
    x2: e([cfg.hidden, T]),
    g: e([cfg.intermediate, T]),
  };
  const bs = new BackwardScratch(gpu, cfg, T, s.headGroup);
  const y = await Tensor.from(gpu, x, [cfg.hidden, T], "y");
  const tt = await Tensor.from(gpu, target, [cfg.hidden, T], "target");
  const dy = e([cfg.hidden, T]), sq = e([T]), dx = e([cfg.hidden, T]);
  const dIn = e([cfg.hidden]), dPost = e([cfg.hidden]);
  forwardBlock(gpu, block, y, s, keep);
  mseGrad(gpu, y.all, tt.all, dy.all, sq.all, cfg.hidden, T, 2 / (cfg.hidden * T));
  const grads = new Map<LinearKind, Tensor>();
  for (const kind of LINEAR_KINDS) grads.set(kind, e([wT[kind].size]));
  backwardBlock(gpu, block, s, keep, bs, dy, {
    w,
    dx,
    dInputNorm: dIn,
    dPostNorm: dPost,
    onWeightGrad: (kind, r) => gpu.copy(r.buffer, 0, grads.get(kind)!.buffer, 0, r.size!),
  });
  const loss = (b: BlockRefWeights, xin: Float32Array) => {
    const out = blockRef(b, xin, T, rope.cos, rope.sin);
    let acc = 0;
    for (let i = 0; i < out.length; i++) acc += (out[i] - target[i]) ** 2;
    return acc / out.length;
  };
  const rng = new Rng(5);
  const eps = 1e-3;
  const check = async (
    label: string,
    g: Tensor,
    base: Float32Array,
    set: (v: Float32Array) => number,
  ) => {
    const grad = await g.toF32();
    for (let r = 0; r < 2; r++) {
      const dir = new Float32Array(base.length).map(() => rng.next() * 2 - 1);
      const fd = (set(base.map((v, i) =>
        v + eps * dir[i]
      )) - set(base.map((v, i) => v - eps * dir[i]))) / (2 * eps);
      let an = 0;
      for (let i = 0; i < dir.length; i++) an += grad[i] * dir[i];
      assertClose([an], [fd], 2e-5, 2e-3, `${label} directional derivative ${r}`);
    }
  };
  for (const kind of LINEAR_KINDS) {
    await check(
      `dW^T ${kind}`,
      grads.get(kind)!,
      ref.w[kind],
      (v) => loss({ ...ref, w: { ...ref.w, [kind]: v } }, x),
    );
  }
  await check("dx", dx, x, (v) => loss(ref, v));
  await check("d input_norm", dIn, ref.inputNorm, (v) => loss({ ...ref, inputNorm: v }, x));
  await check("d post_norm", dPost, ref.postNorm, (v) => loss({ ...ref, postNorm: v }, x));
  for (
    const t of [
      y,
      tt,
      dy,
      sq,
      dx,
      dIn,
      dPost,
      ...grads.values(),
      ...Object.values(keep),
      ...Object.values(wT),
      ...Object.values(w),
    ]
  ) t.release();
  bs.release();
  s.release();
});
