// The student block's codebook gradients against central differences of the f64-summed
// TypeScript block reference, and one AdamW step against the reference step.
import { decodeT } from "../../src/cluster/vectorize.ts";
import { type CodebookData, StudentBlock } from "../../src/finetune/student.ts";
import { getGpu } from "../../src/gpu/device.ts";
import { Tensor } from "../../src/gpu/tensor.ts";
import {
  LINEAR_KINDS,
  type LinearKind,
  linearNames,
  type ModelConfig,
  ropeInvFreq,
} from "../../src/io/config.ts";
import { mseGrad } from "../../src/kernels/mse.ts";
import { ropeTables } from "../../src/kernels/rope.ts";
import { Rng } from "../../src/util/rng.ts";
import { blockRef, type BlockRefWeights } from "../reference/block.ts";
import { adamwRef } from "../reference/adamw.ts";
import { assertClose, randomF32 } from "../util.ts";

const cfg: ModelConfig = {
  modelType: "llama",
  hidden: 16,
  intermediate: 22,
  layers: 1,
  heads: 4,
  kvHeads: 2,
  headDim: 4,
  vocab: 32,
  maxPositions: 64,
  ropeTheta: 10000,
  rmsNormEps: 1e-5,
  tieEmbeddings: true,
  ropeScaling: null,
  slidingWindow: null,
};
const T = 9;

function makeBooks(seed: number): CodebookData[] {
  const rng = new Rng(seed);
  return linearNames(0, cfg).map((lin, i) => {
    const d = [2, 3, 1, 4, 3, 2, 5][i], n = 5, splits = lin.in % 2 === 0 ? 2 : 1;
    const cols = Math.ceil(lin.out / d);
    const scale = 1.5 / Math.sqrt(lin.in);
    const centroids = randomF32(splits * n * d, seed + i, -scale, scale);
    const codes = Array.from({ length: lin.in * cols }, () => rng.int(n));
    return { kind: lin.kind, centroids, codes, n, d, splits };
  });
}

/** W^T of every linear from the books (splits use their own codebook rows). */
function weights(books: CodebookData[], norms: [Float32Array, Float32Array]): BlockRefWeights {
  const w = {} as BlockRefWeights["w"];
  for (const lin of linearNames(0, cfg)) {
    const b = books.find((x) => x.kind === lin.kind)!;
    const cols = Math.ceil(lin.out / b.d), rows = lin.in / b.splits;
    const out = new Float32Array(lin.in * lin.out);
    for (let s = 0; s < b.splits; s++) {
      const codes = Uint32Array.from(b.codes).subarray(s * rows * cols, (s + 1) * rows * cols);
      const c = b.centroids.subarray(s * b.n * b.d, (s + 1) * b.n * b.d);
      out.set(decodeT(c, codes, rows, lin.out, b.d), s * rows * lin.out);
    }
    w[lin.kind] = out;
  }
  return {
    hidden: cfg.hidden,
    intermediate: cfg.intermediate,
    heads: cfg.heads,
    kvHeads: cfg.kvHeads,
    headDim: cfg.headDim,
    eps: cfg.rmsNormEps,
    w,
    inputNorm: norms[0],
    postNorm: norms[1],
  };
}

function lossRef(
  b: BlockRefWeights,
  x: Float32Array,
  target: Float32Array,
  rope: { cos: Float32Array; sin: Float32Array },
): number {
  const y = blockRef(b, x, T, rope.cos, rope.sin);
  let s = 0;
  for (let i = 0; i < y.length; i++) s += (y[i] - target[i]) ** 2;
  return s / y.length;
}

Deno.test("student codebook gradients match finite differences of the reference block", async () => {
  const gpu = await getGpu();
  const books = makeBooks(11);
  const norms: [Float32Array, Float32Array] = [
    randomF32(cfg.hidden, 3, 0.5, 1.5),
    randomF32(cfg.hidden, 4, 0.5, 1.5),
  ];
  const rope = ropeTables(ropeInvFreq(cfg), T);
  const x = randomF32(cfg.hidden * T, 5, -2, 2), target = randomF32(cfg.hidden * T, 6, -2, 2);
  const student = await StudentBlock.create(gpu, cfg, T, books, norms[0], norms[1], rope);
  const tx = await Tensor.from(gpu, x, [cfg.hidden, T], "x");
  const tt = await Tensor.from(gpu, target, [cfg.hidden, T], "target");
  const y = student.forward(tx, true);
  mseGrad(gpu, y.all, tt.all, student.dy.all, student.sq.all, cfg.hidden, T, 2 / (cfg.hidden * T));
  student.backward();
  const base = weights(books, norms);
  const sq = await student.sq.toF32();
  assertClose(
    [sq.reduce((a, b) => a + b, 0) / (cfg.hidden * T)],
    [lossRef(base, x, target, rope)],
    1e-6,
    1e-5,
    "loss",
  );
  const eps = 1e-3;
  const rng = new Rng(99);
  for (const kind of LINEAR_KINDS) {
    const l = (student as unknown as { linears: { kind: LinearKind; dc: Tensor }[] }).linears.find((
      q,
    ) => q.kind === kind)!;
    const grad = await l.dc.toF32();
    const b = books.find((q) => q.kind === kind)!;
    // Three random directions per codebook.
    for (let r = 0; r < 3; r++) {
      const dir = new Float32Array(b.centroids.length).map(() => rng.next() * 2 - 1);
      const shifted = (sign: number) => {
        const c = b.centroids.map((v, i) => v + sign * eps * dir[i]);
        return weights(books.map((q) => q.kind === kind ? { ...q, centroids: c } : q), norms);
      };
      const fd = (lossRef(shifted(1), x, target, rope) - lossRef(shifted(-1), x, target, rope)) /
        (2 * eps);
      let an = 0;
      for (let i = 0; i < dir.length; i++) an += grad[i] * dir[i];
      assertClose([an], [fd], 2e-5, 2e-3, `${kind} directional derivative ${r}`);
    }
  }
  tx.release();
  tt.release();
  student.release();
});

Deno.test("one AdamW step on a tiny student block equals the TypeScript reference step", async () => {
  const gpu = await getGpu();
  const books = makeBooks(21);
  const norms: [Float32Array, Float32Array] = [
    randomF32(cfg.hidden, 13, 0.5, 1.5),
    randomF32(cfg.hidden, 14, 0.5, 1.5),
  ];
  const rope = ropeTables(ropeInvFreq(cfg), T);
  const student = await StudentBlock.create(gpu, cfg, T, books, norms[0], norms[1], rope);
  const tx = await Tensor.from(gpu, randomF32(cfg.hidden * T, 15, -2, 2), [cfg.hidden, T], "x");
  const tt = await Tensor.from(gpu, randomF32(cfg.hidden * T, 16, -2, 2), [cfg.hidden, T], "t");
  const opt = { lr: 5e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1 };
  const linears = (student as unknown as { linears: { kind: LinearKind; dc: Tensor }[] }).linears;
  for (let step = 1; step <= 2; step++) {
    const before = (await student.state()).tensors;
    const y = student.forward(tx, true);
    mseGrad(
      gpu,
      y.all,
      tt.all,
      student.dy.all,
      student.sq.all,
      cfg.hidden,
      T,
      2 / (cfg.hidden * T),
    );
    student.backward();
    const grads = new Map<LinearKind, Float32Array>();
    for (const l of linears) grads.set(l.kind, await l.dc.toF32());
    student.update(opt);
    const after = (await student.state()).tensors;
    for (const kind of LINEAR_KINDS) {
      const p = before.get(`${kind}.codebook`)!.slice();
      const m = before.get(`${kind}.adam_m`)!.slice(), v = before.get(`${kind}.adam_v`)!.slice();
      adamwRef(p, grads.get(kind)!, m, v, { ...opt, step });
      assertClose(
        after.get(`${kind}.codebook`)!,
        p,
        0,
        1e-6,
        `${kind} codebook after step ${step}`,
      );
      assertClose(after.get(`${kind}.adam_v`)!, v, 0, 1e-6, `${kind} adam v after step ${step}`);
    }
  }
  tx.release();
  tt.release();
  student.release();
});
