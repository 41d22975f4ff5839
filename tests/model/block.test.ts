// The GPU decoder block against the composed TypeScript reference on random weights.
import { getGpu } from "../../src/gpu/device.ts";
import { Tensor } from "../../src/gpu/tensor.ts";
import type { ModelConfig } from "../../src/io/config.ts";
import { ropeInvFreq } from "../../src/io/config.ts";
import { ropeTables } from "../../src/kernels/rope.ts";
import {
  BlockScratch,
  type BlockWeights,
  forwardBlock,
  releaseBlock,
} from "../../src/model/block.ts";
import { type LinearName, linearOf, LINEARS } from "../../src/model/weights.ts";
import { blockRef, type BlockRefWeights } from "../reference/block.ts";
import { assertClose, randomF32 } from "../util.ts";

function config(p: Partial<ModelConfig>): ModelConfig {
  return {
    modelType: "llama",
    hidden: 48,
    intermediate: 100,
    layers: 1,
    heads: 6,
    kvHeads: 2,
    headDim: 8,
    vocab: 64,
    maxPositions: 512,
    ropeTheta: 10000,
    rmsNormEps: 1e-5,
    tieEmbeddings: true,
    ropeScaling: null,
    slidingWindow: null,
    ...p,
  };
}

for (const [windows, T] of [[1, 37], [3, 16]]) {
  Deno.test(`decoder block matches the TypeScript reference (GQA 6/2 heads, ${windows} windows of ${T})`, async () => {
    const gpu = await getGpu();
    const cfg = config({});
    const ref: BlockRefWeights = {
      hidden: cfg.hidden,
      intermediate: cfg.intermediate,
      heads: cfg.heads,
      kvHeads: cfg.kvHeads,
      headDim: cfg.headDim,
      eps: cfg.rmsNormEps,
      w: {} as BlockRefWeights["w"],
      inputNorm: randomF32(cfg.hidden, 91, 0.5, 1.5),
      postNorm: randomF32(cfg.hidden, 92, 0.5, 1.5),
    };
    const w = {} as Record<LinearName, Tensor>;
    let seed = 100;
    for (const name of LINEARS) {
      const lin = linearOf(cfg, 0, name);
      const scale = 1 / Math.sqrt(lin.in);
      ref.w[name] = randomF32(lin.in * lin.out, seed++, -2 * scale, 2 * scale);
      w[name] = await Tensor.from(gpu, ref.w[name], [lin.in, lin.out], name);
    }
    const block: BlockWeights = {
      layer: 0,
      w,
      inputNorm: await Tensor.from(gpu, ref.inputNorm, [cfg.hidden], "in_norm"),
      postNorm: await Tensor.from(gpu, ref.postNorm, [cfg.hidden], "post_norm"),
    };
    const tables = ropeTables(ropeInvFreq(cfg), T);
    const scratch = await BlockScratch.create(gpu, cfg, windows, T, tables);
    const xs = Array.from({ length: windows }, (_, i) => randomF32(cfg.hidden * T, 7 + i));
    // feature-major [hidden, windows * T]
    const n = windows * T;
    const packed = new Float32Array(cfg.hidden * n);
    for (let wi = 0; wi < windows; wi++) {
      for (let h = 0; h < cfg.hidden; h++) {
        packed.set(xs[wi].subarray(h * T, h * T + T), h * n + wi * T);
      }
    }
    const x = await Tensor.from(gpu, packed, [cfg.hidden, n], "x");
    forwardBlock(gpu, block, x, scratch);
    const got = await x.toF32();
    for (let wi = 0; wi < windows; wi++) {
      const want = blockRef(ref, xs[wi], T, tables.cos, tables.sin);
      const mine = new Float32Array(cfg.hidden * T);
      for (let h = 0; h < cfg.hidden; h++) {
        mine.set(got.subarray(h * n + wi * T, h * n + wi * T + T), h * T);
      }
      assertClose(mine, want, 2e-5, 2e-5, `block output window ${wi}`);
    }
    x.release();
    scratch.release();
    releaseBlock(block);
  });
}
