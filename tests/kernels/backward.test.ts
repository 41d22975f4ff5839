import { getGpu, type Gpu } from "../../src/gpu/device.ts";
import { Tensor } from "../../src/gpu/tensor.ts";
import { rope, ropeTables } from "../../src/kernels/rope.ts";
import {
  buildTokenIndex,
  causalSoftmaxBackward,
  embedBackward,
  NO_TARGET,
  RMSNORM_BACKWARD_MAX_H,
  rmsnormBackward,
  ropeBackward,
  siluMulBackward,
  siluMulBackwardInPlace,
  softmaxXentBackward,
} from "../../src/kernels/backward.ts";
import { uploadCodeIndex } from "../../src/kernels/codebook.ts";
import { Rng } from "../../src/util/rng.ts";
import {
  causalSoftmax64,
  causalSoftmaxBackwardRef,
  dot64,
  embedBackwardRef,
  finiteDiff,
  rmsnorm64,
  rmsnormBackwardRef,
  rope64,
  ropeBackwardRef,
  siluMul64,
  siluMulBackwardRef,
  softmaxXentBackwardRef,
  xentLoss64,
} from "../reference/backward.ts";
import { assertClose, randomF32 } from "../util.ts";

async function up(gpu: Gpu, data: Float32Array | Uint32Array, label: string): Promise<Tensor> {
  return await Tensor.from(gpu, data, [data.length], label);
}

function invFreq(headDim: number, theta = 10000): Float64Array {
  const inv = new Float64Array(headDim / 2);
  for (let i = 0; i < inv.length; i++) inv[i] = 1 / theta ** ((2 * i) / headDim);
  return inv;
}

function randomInts(n: number, below: number, seed: number): Uint32Array {
  const rng = new Rng(seed);
  return Uint32Array.from({ length: n }, () => rng.int(below));
}

function expectThrow(f: () => void, part: string): void {
  let msg = "";
  try {
    f();
  } catch (e) {
    msg = (e as Error).message;
  }
  if (!msg.includes(part)) throw new Error(`expected an error with "${part}", got "${msg}"`);
}

// ---------------------------------------------------------------- finite-difference checks

Deno.test("rmsnormBackwardRef matches central differences of the float64 forward", () => {
  const H = 5, T = 3, eps = 1e-3;
  const x = randomF32(H * T, 1, -2, 2), w = randomF32(H, 2, 0.5, 1.5), dy = randomF32(H * T, 3);
  const { dx, dw } = rmsnormBackwardRef(x, w, dy, H, T, eps);
  assertClose(dx, finiteDiff((xx) => dot64(dy, rmsnorm64(xx, w, H, T, eps)), x), 1e-8, 1e-6, "dx");
  assertClose(dw, finiteDiff((ww) => dot64(dy, rmsnorm64(x, ww, H, T, eps)), w), 1e-8, 1e-6, "dw");
});

Deno.test("ropeBackwardRef matches central differences of the float64 forward", () => {
  const nHeads = 2, hd = 6, T = 3;
  const { cos, sin } = ropeTables(invFreq(hd), T, 7);
  const x = randomF32(nHeads * hd * T, 4), dy = randomF32(nHeads * hd * T, 5);
  const want = finiteDiff((xx) => dot64(dy, rope64(xx, cos, sin, nHeads, hd, T)), x);
  assertClose(ropeBackwardRef(dy, cos, sin, nHeads, hd, T), want, 1e-9, 1e-7, "rope");
});

Deno.test("causalSoftmaxBackwardRef matches central differences (windows, query blocks)", () => {
  const heads = 2, T = 6, scale = 0.7;
  for (const [window, q0, nq] of [[0, 0, 6], [2, 0, 6], [0, 3, 3], [3, 2, 4]]) {
    const s = randomF32(heads * T * nq, 6 + window + q0, -2, 2);
    const dp = randomF32(heads * T * nq, 7 + window);
    const p = causalSoftmax64(s, heads, T, scale, window, q0, nq);
    const got = causalSoftmaxBackwardRef(p, dp, heads, T, scale, window, q0, nq);
    const want = finiteDiff(
      (ss) => dot64(dp, causalSoftmax64(ss, heads, T, scale, window, q0, nq)),
      s,
    );
    assertClose(got, want, 1e-9, 1e-6, `window=${window} q0=${q0}`);
  }
});

Deno.test("siluMulBackwardRef matches central differences", () => {
  const n = 9;
  const g = randomF32(n, 8, -6, 6), u = randomF32(n, 9), dh = randomF32(n, 10);
  const { dg, du } = siluMulBackwardRef(g, u, dh);
  assertClose(dg, finiteDiff((gg) => dot64(dh, siluMul64(gg, u)), g), 1e-9, 1e-6, "dg");
  assertClose(du, finiteDiff((uu) => dot64(dh, siluMul64(g, uu)), u), 1e-9, 1e-6, "du");
});

Deno.test("softmaxXentBackwardRef matches central differences (with an ignored row)", () => {
  const T = 4, V = 7, scale = 1 / 3;
  const logits = randomF32(T * V, 11, -3, 3), targets = new Uint32Array([2, NO_TARGET, 0, 6]);
  const want = finiteDiff((l) => xentLoss64(l, targets, T, V, scale), logits);
  assertClose(softmaxXentBackwardRef(logits, targets, T, V, scale), want, 1e-9, 1e-6, "xent");
});

Deno.test("embedBackwardRef matches central differences of the lookup", () => {
  const V = 6, H = 3, T = 10;
  const table = randomF32(V * H, 12), ids = randomInts(T, V, 13), dy = randomF32(H * T, 14);
  ids[3] = ids[7] = 4; // a repeated token
  const embed64 = (tab: Float64Array) => {
    const out = new Float64Array(H * T);
    for (let t = 0; t < T; t++) for (let h = 0; h < H; h++) out[h * T + t] = tab[ids[t] * H + h];
    return out;
  };
  const want = finiteDiff((tab) => dot64(dy, embed64(tab)), table);
  assertClose(embedBackwardRef(dy, ids, V, H, T), want, 1e-9, 1e-7, "dTable");
});

// ---------------------------------------------------------------- rmsnormBackward

async function rmsnormOnGpu(
  x: Float32Array,
  w: Float32Array,
  dy: Float32Array,
  H: number,
  T: number,
  eps: number,
  init?: { dx: Float32Array; dw: Float32Array },
) {
  const gpu = await getGpu();
  const tx = await up(gpu, x, "x"), tw = await up(gpu, w, "w"), tdy = await up(gpu, dy, "dy");
  const tdx = init ? await up(gpu, init.dx, "dx") : Tensor.empty(gpu, [H * T], "dx");
  const tdw = init ? await up(gpu, init.dw, "dw") : Tensor.empty(gpu, [H], "dw");
  const tr = Tensor.empty(gpu, [T], "rstd");
  rmsnormBackward(gpu, tx.all, tw.all, tdy.all, tdx.all, H, T, eps, {
    dw: tdw.all,
    rstd: tr.all,
    accumulate: init !== undefined,
    ...(init ? {} : { accumulateDw: false }), // dw accumulates by default
  });
  const dx = await tdx.toF32(), dw = await tdw.toF32();
  // Without dw: the plain entry point gives the same dx.
  const tdx2 = init ? await up(gpu, init.dx, "dx2") : Tensor.empty(gpu, [H * T], "dx2");
  rmsnormBackward(gpu, tx.all, tw.all, tdy.all, tdx2.all, H, T, eps, {
    accumulate: init !== undefined,
  });
  const dx2 = await tdx2.toF32();
  for (const t of [tx, tw, tdy, tdx, tdw, tr, tdx2]) t.release();
  assertClose(dx2, dx, 0, 0, "dx without dw");
  return { dx, dw };
}

for (const [H, T] of [[1, 1], [7, 1], [64, 259], [301, 67], [4099, 131]]) {
  Deno.test(`rmsnormBackward matches reference (H=${H}, T=${T})`, async () => {
    const x = randomF32(H * T, H + T, -3, 3), w = randomF32(H, 7, 0.5, 1.5);
    const dy = randomF32(H * T, H * T);
    const got = await rmsnormOnGpu(x, w, dy, H, T, 1e-5);
    const want = rmsnormBackwardRef(x, w, dy, H, T, 1e-5);
    assertClose(got.dx, want.dx, 1e-6, 1e-4, "dx");
    assertClose(got.dw, want.dw, 1e-5, 1e-5, "dw");
  });
}

Deno.test("rmsnormBackward accumulates into dx and dw", async () => {
  const H = 33, T = 70;
  const x = randomF32(H * T, 20, -2, 2), w = randomF32(H, 21, 0.5, 1.5), dy = randomF32(H * T, 22);
  const init = { dx: randomF32(H * T, 23), dw: randomF32(H, 24) };
  const got = await rmsnormOnGpu(x, w, dy, H, T, 1e-6, init);
  const want = rmsnormBackwardRef(x, w, dy, H, T, 1e-6);
  assertClose(got.dx, want.dx.map((v, i) => v + init.dx[i]), 1e-6, 1e-4, "dx");
  assertClose(got.dw, want.dw.map((v, i) => v + init.dw[i]), 1e-5, 1e-5, "dw");
});

Deno.test("rmsnormBackward reaches feature H-1 when H is near the loop limit", async () => {
  const H = 120_003, T = 3;
  const x = randomF32(H * T, 25, -0.01, 0.01), w = randomF32(H, 26, 0.5, 1.5);
  const dy = randomF32(H * T, 27);
  x[(H - 1) * T + T - 1] = 1000; // dominates the last token's mean square
  dy[(H - 1) * T + T - 1] = 50;
  const got = await rmsnormOnGpu(x, w, dy, H, T, 1e-6);
  const want = rmsnormBackwardRef(x, w, dy, H, T, 1e-6);
  assertClose(got.dx, want.dx, 1e-5, 1e-3, "dx");
  assertClose(got.dw, want.dw, 1e-5, 1e-4, "dw");
});

Deno.test("rmsnormBackward dw sums 4,000,000 tokens over two dispatches", async () => {
  const H = 2, T = 4_000_000;
  const x = randomF32(H * T, 28, 0.5, 1), w = new Float32Array([1, 2]);
  const dy = new Float32Array(H * T);
  dy[T - 1] = 3; // feature 0, last token (the second dispatch)
  dy[T] = 5; // feature 1, first token
  dy[2 * T - 1] = 7; // feature 1, last token
  const got = await rmsnormOnGpu(x, w, dy, H, T, 1e-6);
  const want = rmsnormBackwardRef(x, w, dy, H, T, 1e-6);
  assertClose(got.dw, want.dw, 1e-6, 1e-6, "dw");
  assertClose(got.dx.subarray(T - 10), want.dx.subarray(T - 10), 1e-6, 1e-5, "dx tail");
});

Deno.test("rmsnormBackward rejects H past the loop limit and dw without rstd", async () => {
  const gpu = await getGpu();
  const b = { buffer: gpu.createBuffer(16, "tiny") };
  expectThrow(
    () => rmsnormBackward(gpu, b, b, b, b, RMSNORM_BACKWARD_MAX_H + 1, 1, 1e-5),
    "outside",
  );
  expectThrow(() => rmsnormBackward(gpu, b, b, b, b, 1, 1, 1e-5, { dw: b }), "rstd");
  gpu.releaseBuffer(b.buffer);
});

// ---------------------------------------------------------------- ropeBackward

for (
  const [nHeads, hd, T, pos0] of [[1, 2, 1, 0], [3, 8, 1, 5], [5, 64, 259, 0], [4, 16, 67, 1e5]]
) {
  Deno.test(`ropeBackward matches reference and undoes rope (heads=${nHeads}, headDim=${hd}, T=${T})`, async () => {
    const gpu = await getGpu();
    const g = randomF32(nHeads * hd * T, T + hd, -2, 2);
    const { cos, sin } = ropeTables(invFreq(hd), T, pos0);
    const tg = await up(gpu, g, "g"),
      tc = await up(gpu, cos, "cos"),
      ts = await up(gpu, sin, "sin");
    ropeBackward(gpu, tg.all, tc.all, ts.all, nHeads, hd, T);
    assertClose(await tg.toF32(), ropeBackwardRef(g, cos, sin, nHeads, hd, T), 1e-6, 1e-6, "rope");
    rope(gpu, tg.all, tc.all, ts.all, nHeads, hd, T);
    assertClose(await tg.toF32(), g, 2e-6, 2e-6, "round trip");
    for (const t of [tg, tc, ts]) t.release();
  });
}

// ---------------------------------------------------------------- causalSoftmaxBackward

async function softmaxBackwardOnGpu(
  p: Float32Array,
  dp: Float32Array,
  heads: number,
  T: number,
  scale: number,
  window = 0,
  q0 = 0,
  nq = T,
): Promise<Float32Array> {
  const gpu = await getGpu();
  const tp = await up(gpu, p, "p"), tg = await up(gpu, dp, "dp");
  causalSoftmaxBackward(gpu, tp.all, tg.all, heads, T, scale, window, { q0, nq });
  const got = await tg.toF32();
  tp.release();
  tg.release();
  return got;
}

const softmaxCases: [number, number, number, number, number, number][] = [
  // heads, T, scale, window, q0, nq
  [3, 1, 0.5, 0, 0, 1],
  [1, 2, 1, 0, 0, 2],
  [2, 130, 0.125, 0, 0, 130],
  [3, 100, 0.3, 17, 0, 100],
  [1, 70, 1, 1, 0, 70],
  [2, 150, 0.7, 0, 100, 50],
  [2, 150, 0.7, 40, 100, 50],
];
for (const [heads, T, scale, window, q0, nq] of softmaxCases) {
  Deno.test(`causalSoftmaxBackward matches reference (heads=${heads}, T=${T}, window=${window}, q0=${q0})`, async () => {
    const s = randomF32(heads * T * nq, T + window, -5, 5);
    const p = Float32Array.from(causalSoftmax64(s, heads, T, scale, window, q0, nq));
    const dp = randomF32(heads * T * nq, T * 3 + 1, -2, 2); // masked entries too: must give 0
    const got = await softmaxBackwardOnGpu(p, dp, heads, T, scale, window, q0, nq);
    const want = causalSoftmaxBackwardRef(p, dp, heads, T, scale, window, q0, nq);
    assertClose(got, want, 1e-7, 1e-4, "ds");
  });
}

Deno.test("causalSoftmaxBackward reaches the last of 130,000 keys (loop limit)", async () => {
  const T = 130_000, nq = 3, q0 = T - nq;
  const s = randomF32(T * nq, 30, -1, 1);
  s[(T - 1) * nq + nq - 1] = 12; // the last query puts most of its mass on its own key
  const p = Float32Array.from(causalSoftmax64(s, 1, T, 1, 0, q0, nq));
  const dp = randomF32(T * nq, 31, -1, 1);
  dp[(T - 1) * nq + nq - 1] = 100;
  const got = await softmaxBackwardOnGpu(p, dp, 1, T, 1, 0, q0, nq);
  const want = causalSoftmaxBackwardRef(p, dp, 1, T, 1, 0, q0, nq);
  assertClose(got, want, 1e-6, 1e-3, "ds");
  const k = (T - 1) * nq + nq - 1;
  if (!(Math.abs(want[k]) > 1)) throw new Error(`planted gradient too small: ${want[k]}`);
});

// ---------------------------------------------------------------- siluMulBackward

for (const n of [1, 257, 100_003]) {
  Deno.test(`siluMulBackward matches reference, out of place and in place (n=${n})`, async () => {
    const gpu = await getGpu();
    const g = randomF32(n, n, -8, 8), u = randomF32(n, n + 1), dh = randomF32(n, n + 2);
    const want = siluMulBackwardRef(g, u, dh);
    const tg = await up(gpu, g, "g"), tu = await up(gpu, u, "u"), tdh = await up(gpu, dh, "dh");
    const tdg = Tensor.empty(gpu, [n], "dg"), tdu = Tensor.empty(gpu, [n], "du");
    siluMulBackward(gpu, tg.all, tu.all, tdh.all, tdg.all, tdu.all, n);
    assertClose(await tdg.toF32(), want.dg, 1e-6, 1e-5, "dg");
    assertClose(await tdu.toF32(), want.du, 1e-6, 1e-5, "du");
    siluMulBackwardInPlace(gpu, tg.all, tu.all, tdh.all, n);
    assertClose(await tg.toF32(), await tdg.toF32(), 0, 0, "dg in place");
    assertClose(await tu.toF32(), await tdu.toF32(), 0, 0, "du in place");
    for (const t of [tg, tu, tdh, tdg, tdu]) t.release();
  });
}

// ---------------------------------------------------------------- softmaxXentBackward

async function xentOnGpu(
  logits: Float32Array,
  targets: Uint32Array,
  T: number,
  V: number,
  scale: number,
  inPlace = false,
): Promise<Float32Array> {
  const gpu = await getGpu();
  const tl = await up(gpu, logits, "logits"), tt = await up(gpu, targets, "targets");
  const to = inPlace ? tl : Tensor.empty(gpu, [T * V], "dlogits");
  softmaxXentBackward(gpu, tl.all, tt.all, to.all, T, V, scale);
  const got = await to.toF32();
  for (const t of [tl, tt, to]) t.release();
  return got;
}

for (const [T, V] of [[1, 1], [1, 10], [37, 1000], [5, 32_003]]) {
  Deno.test(`softmaxXentBackward matches reference (T=${T}, V=${V})`, async () => {
    const logits = randomF32(T * V, T + V, -6, 6), targets = randomInts(T, V, V);
    const want = softmaxXentBackwardRef(logits, targets, T, V, 1 / T);
    assertClose(await xentOnGpu(logits, targets, T, V, 1 / T), want, 1e-7, 1e-5, "dlogits");
    assertClose(await xentOnGpu(logits, targets, T, V, 1 / T, true), want, 1e-7, 1e-5, "in place");
  });
}

Deno.test("softmaxXentBackward gives zero rows for NO_TARGET and NaN rows past V", async () => {
  const T = 4, V = 300;
  const logits = randomF32(T * V, 40), targets = new Uint32Array([3, NO_TARGET, V - 1, V]);
  const got = await xentOnGpu(logits, targets, T, V, 0.5);
  const want = softmaxXentBackwardRef(logits, targets.map((t, i) => i === 3 ? 0 : t), T, V, 0.5);
  assertClose(got.subarray(0, 3 * V), want.subarray(0, 3 * V), 1e-7, 1e-5, "rows");
  if (got.subarray(V, 2 * V).some((v) => v !== 0)) throw new Error("NO_TARGET row not zero");
  if (!got.subarray(3 * V).every(Number.isNaN)) throw new Error("target V did not give NaN");
});

Deno.test("softmaxXentBackward sees the max and target planted at the last of 140,000 logits", async () => {
  const T = 3, V = 140_000;
  const logits = randomF32(T * V, 41, -4, 4), targets = new Uint32Array(T).fill(V - 1);
  for (let t = 0; t < T; t++) logits[t * V + V - 1] = 9 + t;
  targets[2] = 0;
  const got = await xentOnGpu(logits, targets, T, V, 1);
  assertClose(got, softmaxXentBackwardRef(logits, targets, T, V, 1), 1e-7, 1e-4, "dlogits");
});

Deno.test("softmaxXentBackward on a row chunk reads targets at t0", async () => {
  const gpu = await getGpu();
  const T = 300, V = 64, t0 = 123, rows = 100; // V * 4 = 256: row offsets stay aligned
  const logits = randomF32(T * V, 42, -3, 3), targets = randomInts(T, V, 43);
  const tl = await up(gpu, logits, "logits"), tt = await up(gpu, targets, "targets");
  const chunk = { buffer: tl.buffer, offset: t0 * V * 4, size: rows * V * 4 };
  softmaxXentBackward(gpu, chunk, tt.all, chunk, rows, V, 0.1, t0);
  const got = await tl.toF32();
  tl.release();
  tt.release();
  const want = Float64Array.from(logits);
  want.set(
    softmaxXentBackwardRef(logits.subarray(t0 * V), targets.subarray(t0), rows, V, 0.1),
    t0 * V,
  );
  assertClose(got, want, 1e-7, 1e-5, "chunk");
});

// ---------------------------------------------------------------- embedBackward

async function embedBackwardOnGpu(
  dx: Float32Array,
  ids: Uint32Array,
  V: number,
  H: number,
  init?: Float32Array,
  pieceItems?: number,
): Promise<Float32Array> {
  const gpu = await getGpu();
  const gi = await uploadCodeIndex(gpu, buildTokenIndex(ids, V, H, pieceItems));
  const tdx = await up(gpu, dx, "dx");
  const tt = init ? await up(gpu, init, "dTable") : Tensor.empty(gpu, [V * H], "dTable");
  embedBackward(gpu, tdx.all, gi, tt.all, { accumulate: init !== undefined });
  const got = await tt.toF32();
  gi.release();
  tdx.release();
  tt.release();
  return got;
}

for (const [V, H, T] of [[10, 7, 1], [50, 70, 333], [1000, 3, 2000]]) {
  Deno.test(`embedBackward matches reference (V=${V}, H=${H}, T=${T})`, async () => {
    const ids = randomInts(T, V, V + T), dx = randomF32(H * T, H + T);
    const got = await embedBackwardOnGpu(dx, ids, V, H);
    assertClose(got, embedBackwardRef(dx, ids, V, H, T), 1e-6, 1e-5, "dTable");
  });
}

Deno.test("embedBackward accumulates and splits a token repeated 150,000 times", async () => {
  const V = 7, H = 2, T = 150_003;
  const ids = randomInts(T, V, 50);
  for (let t = 0; t < T; t += 1) if (t % 1000 !== 0) ids[t] = 3;
  const dx = randomF32(H * T, 51, -1e-3, 1e-3);
  dx[T - 1] = 10; // h = 0 of the last token (id 3)
  dx[2 * T - 1] = -20; // h = 1 of the last token
  const init = randomF32(V * H, 52);
  const got = await embedBackwardOnGpu(dx, ids, V, H, init, 4096);
  const want = embedBackwardRef(dx, ids, V, H, T).map((v, i) => v + init[i]);
  assertClose(got, want, 1e-5, 1e-5, "dTable");
});
