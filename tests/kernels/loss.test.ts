import { getGpu } from "../../src/gpu/device.ts";
import { Tensor } from "../../src/gpu/tensor.ts";
import { nll, NO_TARGET } from "../../src/kernels/loss.ts";
import { Rng } from "../../src/util/rng.ts";
import { nllRef } from "../reference/loss.ts";
import { assertClose, randomF32 } from "../util.ts";

function randomTargets(T: number, V: number, seed: number): Uint32Array {
  const rng = new Rng(seed);
  const out = new Uint32Array(T);
  for (let t = 0; t < T; t++) out[t] = rng.int(V);
  return out;
}

async function nllOnGpu(logits: Float32Array, targets: Uint32Array, T: number, V: number) {
  const gpu = await getGpu();
  const tl = await Tensor.from(gpu, logits, [T, V], "logits");
  const tt = await Tensor.from(gpu, targets, [T], "targets");
  const to = Tensor.empty(gpu, [T], "out");
  nll(gpu, tl.all, tt.all, to.all, T, V);
  const got = await to.toF32();
  for (const t of [tl, tt, to]) t.release();
  return got;
}

for (const [T, V] of [[1, 1], [1, 10], [37, 1000], [5, 32_003]]) {
  Deno.test(`nll matches reference (T=${T}, V=${V})`, async () => {
    const logits = randomF32(T * V, T + V, -6, 6), targets = randomTargets(T, V, V);
    const got = await nllOnGpu(logits, targets, T, V);
    assertClose(got, nllRef(logits, targets, T, V), 1e-5, 1e-5, "nll");
  });
}

Deno.test("nll writes 0 for NO_TARGET and NaN for a target past V", async () => {
  const T = 4, V = 300;
  const logits = randomF32(T * V, 51), targets = new Uint32Array([3, NO_TARGET, V - 1, V]);
  const got = await nllOnGpu(logits, targets, T, V);
  const want = nllRef(logits, targets.map((t, i) => (i === 3 ? 0 : t)), T, V);
  assertClose(got.subarray(0, 3), want.subarray(0, 3), 1e-5, 1e-5, "nll");
  if (got[1] !== 0) throw new Error(`NO_TARGET row gave ${got[1]}`);
  if (!Number.isNaN(got[3])) throw new Error(`target V gave ${got[3]}, expected NaN`);
});

Deno.test("nll sees the max and the target planted at the last of 140,000 logits", async () => {
  const T = 3, V = 140_000;
  const logits = randomF32(T * V, 52, -4, 4);
  const targets = new Uint32Array(T).fill(V - 1);
  for (let t = 0; t < T; t++) logits[t * V + V - 1] = 9 + t;
  const got = await nllOnGpu(logits, targets, T, V);
  assertClose(got, nllRef(logits, targets, T, V), 1e-5, 1e-5, "nll");
});

Deno.test("nll on a row chunk writes at t0 into full-length targets and out", async () => {
  const gpu = await getGpu();
  const T = 300, V = 64, t0 = 123, rows = 100; // V * 4 = 256: every row offset is aligned
  const logits = randomF32(T * V, 53, -3, 3), targets = randomTargets(T, V, 54);
  const tl = await Tensor.from(gpu, logits, [T, V], "logits");
  const tt = await Tensor.from(gpu, targets, [T], "targets");
  const to = await Tensor.from(gpu, new Float32Array(T).fill(-1), [T], "out");
  nll(gpu, tl.rows(t0, rows), tt.all, to.all, rows, V, t0);
  const got = await to.toF32();
  for (const t of [tl, tt, to]) t.release();
  const want = new Float32Array(T).fill(-1);
  want.set(nllRef(logits.subarray(t0 * V), targets.subarray(t0), rows, V), t0);
  assertClose(got, want, 1e-5, 1e-5, "chunk");
});

Deno.test("nll covers more than 65,535 rows (2-D grid)", async () => {
  const T = 70_001, V = 5;
  const logits = randomF32(T * V, 55, -3, 3), targets = randomTargets(T, V, 56);
  const got = await nllOnGpu(logits, targets, T, V);
  assertClose(got, nllRef(logits, targets, T, V), 1e-5, 1e-5, "nll");
});
