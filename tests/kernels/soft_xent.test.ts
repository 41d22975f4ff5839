// The soft-target cross-entropy kernel against its TypeScript reference: random teachers (with
// repeated ids and rows without a teacher), masked rows, a large vocabulary with the target
// planted at its end, and agreement with the hard-target kernels when the teacher is one-hot.
import { getGpu } from "../../src/gpu/device.ts";
import { Tensor } from "../../src/gpu/tensor.ts";
import { NO_TARGET, softmaxXentBackward } from "../../src/kernels/backward.ts";
import { nll } from "../../src/kernels/loss.ts";
import { softXent } from "../../src/kernels/soft_xent.ts";
import { Rng } from "../../src/util/rng.ts";
import { softXentRef } from "../reference/soft_xent.ts";
import { assertClose, randomF32 } from "../util.ts";

interface Case {
  logits: Float32Array;
  targets: Uint32Array;
  tids: Uint32Array;
  tprobs: Float32Array;
  T: number;
  V: number;
  k: number;
}

function randomCase(T: number, V: number, k: number, seed: number): Case {
  const rng = new Rng(seed);
  const targets = new Uint32Array(T), tids = new Uint32Array(T * k);
  const tprobs = new Float32Array(T * k);
  for (let t = 0; t < T; t++) {
    targets[t] = rng.int(V);
    for (let i = 0; i < k; i++) {
      // A few repeated ids, and every fifth row without a teacher (all-zero probabilities).
      tids[t * k + i] = i > 0 && rng.next() < 0.2 ? tids[t * k] : rng.int(V);
      tprobs[t * k + i] = t % 5 === 4 ? 0 : rng.next() / k;
    }
  }
  return { logits: randomF32(T * V, seed + 1, -5, 5), targets, tids, tprobs, T, V, k };
}

async function onGpu(c: Case, w: number, scale: number) {
  const gpu = await getGpu();
  const one = (a: Uint32Array | Float32Array) =>
    a.length > 0 ? a : (a instanceof Uint32Array ? new Uint32Array(1) : new Float32Array(1));
  const tl = await Tensor.from(gpu, c.logits, [c.T, c.V], "logits");
  const tt = await Tensor.from(gpu, c.targets, [c.T], "targets");
  const ti = await Tensor.from(gpu, one(c.tids), [Math.max(1, c.tids.length)], "tids");
  const tp = await Tensor.from(gpu, one(c.tprobs), [Math.max(1, c.tprobs.length)], "tprobs");
  const lo = Tensor.empty(gpu, [c.T], "loss");
  softXent(gpu, {
    logits: tl.all,
    targets: tt.all,
    teacherIds: ti.all,
    teacherProbs: tp.all,
    loss: lo.all,
    T: c.T,
    V: c.V,
    k: c.k,
    weight: w,
    scale,
  });
  const out = { loss: await lo.toF32(), dlogits: await tl.toF32() };
  for (const t of [tl, tt, ti, tp, lo]) t.release();
  return out;
}

for (const [T, V, k, w] of [[1, 1, 0, 1], [7, 50, 3, 1], [37, 1000, 8, 0.5], [5, 3000, 20, 0.3]]) {
  Deno.test(`softXent matches reference (T=${T}, V=${V}, k=${k}, w=${w})`, async () => {
    const c = randomCase(T, V, k, T * 7 + V + k);
    c.targets[Math.floor(T / 2)] = NO_TARGET;
    const scale = 1 / T;
    const got = await onGpu(c, w, scale);
    const want = softXentRef(c.logits, c.targets, c.tids, c.tprobs, T, V, k, w, scale);
    assertClose(got.loss, want.loss, 1e-5, 1e-5, "loss");
    assertClose(got.dlogits, want.dlogits, 1e-6, 1e-5, "dlogits");
  });
}

Deno.test("softXent sees the max, target and teacher planted at the end of 140,000 logits", async () => {
  const T = 2, V = 140_000, k = 2;
  const c = randomCase(T, V, k, 91);
  for (let t = 0; t < T; t++) {
    c.logits[t * V + V - 1] = 9 + t;
    c.targets[t] = V - 1;
    c.tids[t * k] = V - 2;
    c.tprobs[t * k] = 0.5;
  }
  const got = await onGpu(c, 0.7, 1);
  const want = softXentRef(c.logits, c.targets, c.tids, c.tprobs, T, V, k, 0.7, 1);
  assertClose(got.loss, want.loss, 1e-5, 1e-5, "loss");
  assertClose(got.dlogits, want.dlogits, 1e-6, 1e-5, "dlogits");
});

Deno.test("softXent with a one-hot teacher equals nll and softmaxXentBackward", async () => {
  const gpu = await getGpu();
  const T = 9, V = 300, k = 4;
  const c = randomCase(T, V, k, 17);
  for (let t = 0; t < T; t++) {
    c.tprobs.fill(0, t * k, t * k + k);
    c.tids[t * k + 1] = c.targets[t];
    c.tprobs[t * k + 1] = 0.9; // renormalized to 1
  }
  c.targets[3] = NO_TARGET;
  const got = await onGpu(c, 1, 0.25);
  const tl = await Tensor.from(gpu, c.logits, [T, V], "logits");
  const tt = await Tensor.from(gpu, c.targets, [T], "targets");
  const lo = Tensor.empty(gpu, [T], "loss");
  nll(gpu, tl.all, tt.all, lo.all, T, V);
  softmaxXentBackward(gpu, tl.all, tt.all, tl.all, T, V, 0.25);
  const wantLoss = await lo.toF32(), wantGrad = await tl.toF32();
  for (const t of [tl, tt, lo]) t.release();
  assertClose(got.loss, wantLoss, 1e-5, 1e-5, "loss");
  assertClose(got.dlogits, wantGrad, 1e-6, 1e-5, "dlogits");
});

Deno.test("softXent on a row chunk reads and writes at t0", async () => {
  const gpu = await getGpu();
  const T = 12, V = 64, k = 3, t0 = 8, rows = 4; // V * 4 = 256: row offsets stay aligned
  const c = randomCase(T, V, k, 23);
  const tl = await Tensor.from(gpu, c.logits, [T, V], "logits");
  const tt = await Tensor.from(gpu, c.targets, [T], "targets");
  const ti = await Tensor.from(gpu, c.tids, [T * k], "tids");
  const tp = await Tensor.from(gpu, c.tprobs, [T * k], "tprobs");
  const lo = await Tensor.from(gpu, new Float32Array(T).fill(-1), [T], "loss");
  softXent(gpu, {
    logits: tl.rows(t0, rows),
    targets: tt.all,
    teacherIds: ti.all,
    teacherProbs: tp.all,
    loss: lo.all,
    T: rows,
    V,
    k,
    weight: 0.6,
    scale: 0.5,
    t0,
  });
  const loss = await lo.toF32(), dl = await tl.toF32();
  for (const t of [tl, tt, ti, tp, lo]) t.release();
  const want = softXentRef(
    c.logits.subarray(t0 * V),
    c.targets.subarray(t0),
    c.tids.subarray(t0 * k),
    c.tprobs.subarray(t0 * k),
    rows,
    V,
    k,
    0.6,
    0.5,
  );
  const wantLoss = new Float32Array(T).fill(-1);
  wantLoss.set(want.loss, t0);
  const wantLogits = c.logits.slice();
  wantLogits.set(want.dlogits, t0 * V);
  assertClose(loss, wantLoss, 1e-5, 1e-5, "loss");
  assertClose(dl, wantLogits, 1e-6, 1e-5, "logits");
});
