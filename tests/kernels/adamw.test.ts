import { getGpu } from "../../src/gpu/device.ts";
import { Tensor } from "../../src/gpu/tensor.ts";
import { adamw, adamwScalars, type AdamWStep } from "../../src/kernels/adamw.ts";
import { adamwRef } from "../reference/adamw.ts";
import { assertClose, randomF32 } from "../util.ts";

const base = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 };

/** Runs `steps` AdamW steps on the GPU and on the reference, with a new gradient each step. */
async function compare(n: number, steps: number, hp: Omit<AdamWStep, "step">, seed: number) {
  const gpu = await getGpu();
  const p0 = randomF32(n, seed, -1, 1);
  const tp = await Tensor.from(gpu, p0, [n], "param");
  const tm = Tensor.empty(gpu, [n], "m"), tv = Tensor.empty(gpu, [n], "v");
  await gpu.write(tm.buffer, new Float32Array(n));
  await gpu.write(tv.buffer, new Float32Array(n));
  const p = p0.slice(), m = new Float32Array(n), v = new Float32Array(n);
  for (let step = 1; step <= steps; step++) {
    const g = randomF32(n, seed * 100 + step, -2, 2);
    if (n > 1) g[0] = 0; // a zero gradient: only weight decay and momentum move it
    const tg = await Tensor.from(gpu, g, [n], "grad");
    adamw(gpu, tp.all, tg.all, tm.all, tv.all, n, { ...hp, step });
    await gpu.sync();
    tg.release();
    adamwRef(p, g, m, v, { ...hp, step });
  }
  const got = { p: await tp.toF32(), m: await tm.toF32(), v: await tv.toF32() };
  for (const t of [tp, tm, tv]) t.release();
  return { got, want: { p, m, v }, p0 };
}

for (const [n, steps] of [[1, 1], [1000, 1], [100_003, 1], [257, 5], [100_003, 5]]) {
  Deno.test(`adamw matches PyTorch-semantics reference (n=${n}, ${steps} steps)`, async () => {
    const { got, want, p0 } = await compare(n, steps, base, n + steps);
    assertClose(got.m, want.m, 1e-12, 2e-7, "exp_avg");
    assertClose(got.v, want.v, 1e-15, 4e-7, "exp_avg_sq");
    assertClose(got.p, want.p, 1e-9, 4e-7, "param");
    // The step moved the parameters by about lr per step (a sanity check of the reference).
    const moved = Math.abs(got.p[n - 1] - p0[n - 1]);
    if (!(moved > 0.3 * base.lr && moved < 1.5 * steps * base.lr)) {
      throw new Error(`the last parameter moved by ${moved}`);
    }
  });
}

Deno.test("adamw without weight decay, large lr and beta2 = 0.95 over 5 steps", async () => {
  const hp = { lr: 0.1, beta1: 0.8, beta2: 0.95, eps: 1e-6, weightDecay: 0 };
  const { got, want } = await compare(4099, 5, hp, 3);
  assertClose(got.p, want.p, 1e-8, 4e-7, "param");
});

Deno.test("adamwRef follows torch.optim.AdamW on a hand-computed scalar", () => {
  // p = 1, g = 0.5, lr = 0.1, wd = 0.01, step 1: p *= 0.999; m = 0.05; v = 0.00025;
  // m_hat = 0.5, sqrt(v_hat) = 0.5: p = 0.999 - 0.1 * 0.5 / (0.5 + 1e-8).
  const p = new Float32Array([1]), m = new Float32Array(1), v = new Float32Array(1);
  adamwRef(p, new Float32Array([0.5]), m, v, { ...base, lr: 0.1, step: 1 });
  assertClose([p[0], m[0], v[0]], [0.999 - 0.05 / (0.5 + 1e-8), 0.05, 0.00025], 1e-7, 1e-6);
  // Step 2 with g = -0.5: m = 0.9 * 0.05 - 0.05 = -0.005; v = 0.999 * 0.00025 + 0.00025.
  adamwRef(p, new Float32Array([-0.5]), m, v, { ...base, lr: 0.1, step: 2 });
  const mh = -0.005 / (1 - 0.81), vh = (0.999 * 0.00025 + 0.00025) / (1 - 0.999 ** 2);
  const p2 = (0.999 - 0.05 / (0.5 + 1e-8)) * 0.999 - 0.1 * mh / (Math.sqrt(vh) + 1e-8);
  assertClose([p[0], m[0]], [p2, -0.005], 1e-7, 1e-6);
});

Deno.test("adamwScalars computes bias corrections in float64 and rejects step 0", () => {
  const s = adamwScalars({ ...base, step: 3 });
  assertClose(
    [s.stepSize, s.bc2sqrt, s.decay],
    [
      1e-3 / (1 - 0.9 ** 3),
      Math.sqrt(1 - 0.999 ** 3),
      1 - 1e-5,
    ],
    0,
    1e-15,
  );
  let msg = "";
  try {
    adamwScalars({ ...base, step: 0 });
  } catch (e) {
    msg = (e as Error).message;
  }
  if (!msg.includes("step 0")) throw new Error(`unexpected message "${msg}"`);
});

Deno.test("adamw updates a range at an offset and leaves the rest alone", async () => {
  const gpu = await getGpu();
  const n = 1000, off = 128; // elements; 512 bytes keeps the offset aligned
  const p0 = randomF32(n + off, 7), g = randomF32(n + off, 8);
  const tp = await Tensor.from(gpu, p0, [n + off], "param");
  const tg = await Tensor.from(gpu, g, [n + off], "grad");
  const tm = await Tensor.from(gpu, new Float32Array(n + off), [n + off], "m");
  const tv = await Tensor.from(gpu, new Float32Array(n + off), [n + off], "v");
  const r = (t: Tensor) => ({ buffer: t.buffer, offset: off * 4, size: n * 4 });
  adamw(gpu, r(tp), r(tg), r(tm), r(tv), n, { ...base, step: 1 });
  const got = await tp.toF32();
  const p = p0.slice(off), m = new Float32Array(n), v = new Float32Array(n);
  adamwRef(p, g.slice(off), m, v, { ...base, step: 1 });
  assertClose(got.subarray(0, off), p0.subarray(0, off), 0, 0, "untouched");
  assertClose(got.subarray(off), p, 1e-9, 4e-7, "updated");
  for (const t of [tp, tg, tm, tv]) t.release();
});
