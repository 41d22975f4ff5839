// Calibration statistics: the diag / Gram kernels against their TypeScript reference, and the
// statistics of a real block (stories260K) against the reference block's inputs.
import assert from "node:assert/strict";
import { inputDims, inputOf, layerStats } from "../../src/cluster/stats.ts";
import { openModel } from "../../src/format/open.ts";
import { getGpu } from "../../src/gpu/device.ts";
import { Tensor } from "../../src/gpu/tensor.ts";
import { ropeInvFreq } from "../../src/io/config.ts";
import {
  accumulateDiag,
  accumulateGram,
  accumulateGramTiled,
  GRAM_MAX_T,
} from "../../src/kernels/gram.ts";
import { ropeTables } from "../../src/kernels/rope.ts";
import { linearOf, LINEARS } from "../../src/model/weights.ts";
import { blockRef, type BlockRefWeights } from "../reference/block.ts";
import { blockInputsRef, diagRef, gramRef, momentsRef } from "../reference/gram.ts";
import { HAS_SHARED, STORIES, TINYSTORIES } from "../shared.ts";
import { assertClose, randomF32 } from "../util.ts";
import { Rng } from "../../src/util/rng.ts";
import { loadConfig } from "../../src/io/config.ts";
import { compress } from "../../src/pipeline/compress.ts";
import { planMemory } from "../../src/pipeline/memplan.ts";
import { Progress } from "../../src/util/progress.ts";

Deno.test("diag and Gram kernels match the reference (offset columns, row block, two calls)", async () => {
  const gpu = await getGpu();
  const F = 37, ld = 300, T = 250, col0 = 5, r0 = 3, rows = 20;
  const x1 = randomF32(F * ld, 1, -2, 2), x2 = randomF32(F * ld, 2, -2, 2);
  const d0 = randomF32(F, 3), g0 = randomF32(rows * F, 4);
  const tx = await Tensor.from(gpu, x1, [F, ld], "x");
  const td = await Tensor.from(gpu, d0, [F], "diag");
  const tg = await Tensor.from(gpu, g0, [rows, F], "gram");
  for (const [x, c0, t] of [[x1, col0, T], [x2, 0, 17]] as const) {
    await gpu.write(tx.buffer, x);
    accumulateDiag(gpu, { x: tx.all, F, T: t, ld, col0: c0 }, td.all);
    accumulateGram(gpu, { x: tx.all, F, T: t, ld, col0: c0 }, tg.all, r0, rows);
  }
  const gotD = await td.toF32(), gotG = await tg.toF32();
  for (const t of [tx, td, tg]) t.release();
  let wantD = diagRef(d0, x1, F, T, ld, col0);
  wantD = diagRef(wantD, x2, F, 17, ld, 0);
  let wantG = gramRef(g0, x1, F, T, ld, col0, r0, rows);
  wantG = gramRef(wantG, x2, F, 17, ld, 0, r0, rows);
  assertClose(gotD, wantD, 1e-5, 1e-6, "diag");
  assertClose(gotG, wantG, 1e-5, 1e-6, "gram");
});

Deno.test("the tiled Gram (transpose + matmul) matches the reference in two row blocks", async () => {
  const gpu = await getGpu();
  const F = 45, ld = 300, T = 250, col0 = 7;
  const x = randomF32(F * ld, 11, -2, 2);
  const g0 = randomF32(F * F, 12);
  const tx = await Tensor.from(gpu, x, [F, ld], "x");
  const scratch = Tensor.empty(gpu, [F * ld], "scratch");
  const top = await Tensor.from(gpu, g0.slice(0, 20 * F), [20, F], "gram.top");
  const bottom = await Tensor.from(gpu, g0.slice(20 * F), [F - 20, F], "gram.bottom");
  accumulateGramTiled(gpu, { x: tx.all, F, T, ld, col0 }, scratch.all, [
    { acc: top.all, r0: 0, rows: 20 },
    { acc: bottom.all, r0: 20, rows: F - 20 },
  ]);
  const got = new Float32Array(F * F);
  got.set(await top.toF32(), 0);
  got.set(await bottom.toF32(), 20 * F);
  for (const t of [tx, scratch, top, bottom]) t.release();
  assertClose(got, gramRef(g0, x, F, T, ld, col0, 0, F), 1e-5, 1e-5, "tiled gram");
});

Deno.test("diag and Gram kernels reach the last token past one dispatch's token count", async () => {
  const gpu = await getGpu();
  const F = 3, T = GRAM_MAX_T + 3617;
  const x = randomF32(F * T, 5, -1e-3, 1e-3);
  x[2 * T + T - 1] = 100; // planted at the far end of the last row
  const tx = await Tensor.from(gpu, x, [F, T], "x");
  const td = Tensor.empty(gpu, [F], "diag"), tg = Tensor.empty(gpu, [F, F], "gram");
  await gpu.write(td.buffer, new Float32Array(F));
  await gpu.write(tg.buffer, new Float32Array(F * F));
  accumulateDiag(gpu, { x: tx.all, F, T, ld: T }, td.all);
  accumulateGram(gpu, { x: tx.all, F, T, ld: T }, tg.all);
  const gotD = await td.toF32(), gotG = await tg.toF32();
  for (const t of [tx, td, tg]) t.release();
  // Split sums are added in a different order than one pass: compare loosely, but the planted
  // 100^2 must be there.
  assertClose(gotD, diagRef(new Float32Array(F), x, F, T, T), 1e-6, 1e-4, "diag");
  assertClose(gotG, gramRef(new Float32Array(F * F), x, F, T, T), 1e-6, 1e-4, "gram");
  assert.ok(gotD[2] > 9999, `planted value missing: ${gotD[2]}`);
});

Deno.test("each linear kind reads its input", () => {
  assert.deepEqual(
    ["q", "k", "v", "o", "gate", "up", "down"].map((k) => inputOf(k as never)),
    ["attn", "attn", "attn", "o", "mlp", "mlp", "down"],
  );
});

Deno.test({
  name: "stories260K block 1: statistics match the reference block's inputs (diag and Gram)",
  ignore: !HAS_SHARED,
  fn: async () => {
    const gpu = await getGpu();
    const m = await openModel(STORIES);
    const { cfg, source: src } = m;
    try {
      const T = 24, rng = new Rng(11);
      const windows = Array.from(
        { length: 3 },
        () => Int32Array.from({ length: T }, () => rng.int(cfg.vocab)),
      );
      const got = await layerStats({ gpu, cfg, src, windows }, 1, true);
      assert.equal(got.tokens, 3 * T);

      const weights = async (l: number): Promise<BlockRefWeights> => {
        const w = {} as BlockRefWeights["w"];
        for (const name of LINEARS) w[name] = await src.linearT(l, name);
        return {
          hidden: cfg.hidden,
          intermediate: cfg.intermediate,
          heads: cfg.heads,
          kvHeads: cfg.kvHeads,
          headDim: cfg.headDim,
          eps: cfg.rmsNormEps,
          w,
          inputNorm: await src.tensor(`model.layers.${l}.input_layernorm.weight`),
          postNorm: await src.tensor(`model.layers.${l}.post_attention_layernorm.weight`),
        };
      };
      const { cos, sin } = ropeTables(ropeInvFreq(cfg), T);
      const table = await src.tensor("model.embed_tokens.weight");
      const b0 = await weights(0), b1 = await weights(1);
      const inputs = windows.map((ids) => {
        const x = new Float32Array(cfg.hidden * T);
        for (let t = 0; t < T; t++) {
          for (let h = 0; h < cfg.hidden; h++) x[h * T + t] = table[ids[t] * cfg.hidden + h];
        }
        return blockInputsRef(b1, blockRef(b0, x, T, cos, sin), T, cos, sin);
      });
      const dims = inputDims(cfg);
      assert.equal(dims.down, linearOf(cfg, 1, "down").in);
      for (const name of ["attn", "o", "mlp", "down"] as const) {
        const want = momentsRef(inputs.map((i) => i[name]), dims[name], T);
        assertClose(got.diag[name], want.diag, 1e-6, 2e-4, `diag.${name}`);
        assertClose(got.gram![name], want.gram, 1e-4, 2e-4, `gram.${name}`);
      }
    } finally {
      m.index.close();
    }
  },
});

Deno.test({
  name: "stories260K: the stats row of the memory plan is within 10% of the measured peaks",
  ignore: !HAS_SHARED,
  fn: async () => {
    const gpu = await getGpu();
    const dir = await Deno.makeTempDir({ prefix: "cluscomp-stats-memplan-" });
    const [samples, seqlen] = [12, 64];
    const r = await compress({
      model: STORIES,
      out: `${dir}/out`,
      work: `${dir}/work`,
      method: "cluscomp",
      cluster: {
        d: 2,
        n: 16,
        overrides: {},
        splits: 1,
        codebookDtype: "f16",
        iters: 2,
        seed: 0,
        init: "random",
        restarts: 1,
        weighting: "activations",
      },
      rtn: { bits: 4, group: 128 },
      calib: { file: TINYSTORIES, samples, seqlen, holdout: 0.25, seed: 0 },
      gpuBudget: 2 ** 31,
    }, new Progress(true));
    const cfg = await loadConfig(STORIES);
    const windows = samples - Math.round(samples * 0.25);
    const plan = (stats: "diag" | "full") =>
      planMemory(cfg, {
        d: 2,
        n: 16,
        splits: 1,
        calibSamples: windows,
        calibSeqlen: seqlen,
        evalSeqlen: 128,
        evalTokens: 1024,
        gpuMemory: 2 ** 31,
        maxBinding: gpu.limits.maxBinding,
        finetune: false,
        extraTerm: false,
        stats,
      }).find((p) => p.stage === "stats")!;
    // Full statistics (the Gram matrices too), measured on one block's pass.
    const m = await openModel(STORIES);
    const rng = new Rng(3);
    const ids = Array.from(
      { length: windows },
      () => Int32Array.from({ length: seqlen }, () => rng.int(cfg.vocab)),
    );
    gpu.bytesPeak = gpu.bytesLive;
    const before = gpu.bytesLive;
    await layerStats({ gpu, cfg, src: m.source, windows: ids }, 0, true);
    const fullPeak = gpu.bytesPeak - before;
    m.index.close();
    const checks: [string, number, number][] = [
      ["stats gpu (diag)", plan("diag").gpu_bytes, r.gpu_peak.stats],
      ["stats host (diag)", plan("diag").host_bytes, r.host_peak.stats],
      ["stats gpu (full)", plan("full").gpu_bytes, fullPeak],
    ];
    await Deno.remove(dir, { recursive: true });
    for (const [what, planned, measured] of checks) {
      console.log(`${what}: planned ${planned}, measured ${measured}`);
      const err = Math.abs(planned - measured) / measured;
      assert.ok(err <= 0.1, `${what}: planned ${planned}, measured ${measured}`);
    }
    assert.ok(plan("full").gpu_bytes > plan("diag").gpu_bytes);
  },
});
