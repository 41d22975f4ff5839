import { getGpu, type Gpu } from "../../src/gpu/device.ts";
import { Tensor } from "../../src/gpu/tensor.ts";
import {
  linearFeature,
  linearToken,
  matmul,
  type MatmulArgs,
  planMatmul,
} from "../../src/kernels/matmul.ts";
import { matmulRef, type MatmulRefArgs } from "../reference/matmul.ts";
import { assertClose, randomF32 } from "../util.ts";

function assert(cond: unknown, message = "assertion failed"): asserts cond {
  if (!cond) throw new Error(message);
}

function assertEquals(got: unknown, want: unknown, message = "values"): void {
  const g = JSON.stringify(got), w = JSON.stringify(want);
  if (g !== w) throw new Error(`${message}: got ${g}, want ${w}`);
}

function assertThrows(fn: () => unknown, includes: string): void {
  try {
    fn();
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    assert(msg.includes(includes), `expected an error mentioning "${includes}", got: ${msg}`);
    return;
  }
  throw new Error(`expected an error mentioning "${includes}"`);
}

type Case = Omit<MatmulArgs, "a" | "b" | "c" | "lda" | "ldb" | "ldc"> & {
  lda?: number;
  ldb?: number;
  ldc?: number;
  /** Extra elements after each operand, so vec4 reads of a ragged last row stay inside. */
  pad?: number;
};

/** Elements an operand spans (as the reference reads it), plus padding. */
function span(off: number, ld: number, rows: number, cols: number, bs: number, n: number) {
  return off + Math.max(n - 1, 0) * bs + Math.max(rows - 1, 0) * ld + cols;
}

/** Runs one case on the GPU and checks every element of C (untouched ones too). */
async function check(gpu: Gpu, cs: Case, seed: number, expectVec?: boolean): Promise<void> {
  const { M, N, K } = cs;
  const lda = cs.lda ?? M, ldb = cs.ldb ?? N, ldc = cs.ldc ?? N, batch = cs.batch ?? 1;
  const nA = Math.floor((batch - 1) / (cs.aBatchDiv ?? 1)) + 1;
  const nB = Math.floor((batch - 1) / (cs.bBatchDiv ?? 1)) + 1;
  const pad = cs.pad ?? 0;
  const a = randomF32(span(cs.aOffset ?? 0, lda, K, M, cs.aBatchStride ?? 0, nA) + pad, seed);
  const b = randomF32(span(cs.bOffset ?? 0, ldb, K, N, cs.bBatchStride ?? 0, nB) + pad, seed + 1);
  const c = randomF32(
    span(cs.cOffset ?? 0, ldc, M, N, cs.cBatchStride ?? 0, batch) + pad,
    seed + 2,
  );
  const ta = await Tensor.from(gpu, a, [a.length], "at");
  const tb = await Tensor.from(gpu, b, [b.length], "b");
  const tc = await Tensor.from(gpu, c, [c.length], "c");
  const args: MatmulArgs = { ...cs, lda, ldb, ldc, a: ta.buffer, b: tb.buffer, c: tc.buffer };
  if (expectVec !== undefined) {
    const plan = planMatmul(gpu, args);
    assertEquals([plan.vecA, plan.vecB], [expectVec, expectVec], "vec4 path choice");
  }
  matmul(gpu, args);
  const want = matmulRef({ ...args, a, b, c } as MatmulRefArgs);
  assertClose(await tc.toF32(), want, 1e-5 * Math.sqrt(K + 1), 1e-5, JSON.stringify(cs));
  ta.release();
  tb.release();
  tc.release();
}

const odd: [number, number, number][] = [
  [1, 1, 1],
  [3, 7, 17],
  [17, 3, 100],
  [100, 172, 7],
  [172, 100, 64],
  [1, 172, 33],
  [172, 1, 33],
  [7, 17, 1],
];

Deno.test("matmul matches reference on odd shapes with packed rows", async () => {
  const gpu = await getGpu();
  let seed = 10;
  for (const [M, N, K] of odd) await check(gpu, { M, N, K }, seed += 3);
});

Deno.test("matmul matches reference with row strides past the row and offsets", async () => {
  const gpu = await getGpu();
  let seed = 100;
  for (const [M, N, K] of odd) {
    const cs = { M, N, K, lda: M + 3, ldb: N + 5, ldc: N + 2, aOffset: 3, bOffset: 1, cOffset: 7 };
    await check(gpu, cs, seed += 3, false);
    await check(gpu, { ...cs, accumulate: true }, seed += 3, false);
  }
});

Deno.test("matmul takes the vec4 path on aligned rows whose M, N are not tile multiples", async () => {
  const gpu = await getGpu();
  let seed = 200;
  for (const [M, N, K] of [[100, 52, 33], [4, 8, 70], [196, 200, 19], [3, 5, 9], [64, 48, 5]]) {
    // Rows padded to a multiple of 4 floats, offsets multiples of 4; C both ragged and aligned.
    const lda = Math.ceil(M / 4) * 4, ldb = Math.ceil(N / 4) * 4 + 4;
    for (const [ldc, cOffset] of [[N + 1, 1], [Math.ceil(N / 4) * 4 + 4, 4]]) {
      const cs = { M, N, K, lda, ldb, ldc, aOffset: 8, bOffset: 4, cOffset, pad: 4 };
      await check(gpu, cs, seed += 3, true);
      await check(gpu, { ...cs, accumulate: true }, seed += 3, true);
    }
  }
});

Deno.test("matmul batches attention heads with grouped-query division", async () => {
  const gpu = await getGpu();
  const T = 17, heads = 8, kvHeads = 2;
  for (const hd of [8, 12]) {
    // Scores per head: At = Q^T head slice [hd, T], B = K^T head slice [hd, T]; C [heads, T, T].
    await check(gpu, {
      M: T,
      N: T,
      K: hd,
      lda: T,
      ldb: T,
      ldc: T,
      batch: heads,
      aBatchStride: hd * T,
      bBatchStride: hd * T,
      cBatchStride: T * T,
      bBatchDiv: heads / kvHeads,
    }, 300 + hd);
  }
  // P·V per head: At = P^T [T, T] per head, B = V [T, hd] shared by 4 heads, C [heads, T, hd].
  await check(gpu, {
    M: T,
    N: 12,
    K: T,
    batch: heads,
    aBatchStride: T * T,
    bBatchStride: T * 12,
    cBatchStride: T * 12,
    bBatchDiv: 4,
  }, 320);
  // The A side divided too, with a batch stride larger than one matrix and accumulate.
  await check(gpu, {
    M: 20,
    N: 7,
    K: 9,
    ldc: 9,
    batch: 6,
    aBatchStride: 9 * 20 + 4,
    bBatchStride: 9 * 7,
    cBatchStride: 20 * 9 + 3,
    aBatchDiv: 3,
    accumulate: true,
  }, 330);
});

Deno.test("matmul sums a planted value at k = K-1 past Mesa's 65,535 loop-iteration cap", async () => {
  const gpu = await getGpu();
  const M = 3, N = 5, K = 70_000;
  const a = randomF32(K * M, 400), b = randomF32(K * N, 401);
  for (let m = 0; m < M; m++) a[(K - 1) * M + m] = 100 + m;
  for (let n = 0; n < N; n++) b[(K - 1) * N + n] = 1000;
  const ta = await Tensor.from(gpu, a, [K, M], "at"), tb = await Tensor.from(gpu, b, [K, N], "b");
  for (const [lda, ldb] of [[M, N], [4, 8]]) {
    // Both the scalar path and (with padded rows) the vec4 path.
    const pa = lda === M ? a : new Float32Array(K * lda),
      pb = ldb === N ? b : new Float32Array(K * ldb);
    for (let k = 0; lda !== M && k < K; k++) {
      pa.set(a.subarray(k * M, k * M + M), k * lda);
      pb.set(b.subarray(k * N, k * N + N), k * ldb);
    }
    const ua = await Tensor.from(gpu, pa, [pa.length], "at"),
      ub = await Tensor.from(gpu, pb, [pb.length], "b");
    const tc = Tensor.empty(gpu, [M, N], "c");
    const args = { M, N, K, a: ua.buffer, lda, b: ub.buffer, ldb, c: tc.buffer, ldc: N };
    assert(planMatmul(gpu, args).dispatches >= 2, "K should be split across dispatches");
    matmul(gpu, args);
    const want = matmulRef({ M, N, K, a, lda: M, b, ldb: N, c: new Float32Array(M * N), ldc: N });
    assert(Math.abs(want[0]) > 5e4, "planted term dominates");
    assertClose(await tc.toF32(), want, 1e-5 * Math.sqrt(K), 1e-5, `K=${K} lda=${lda}`);
    ua.release();
    ub.release();
    tc.release();
  }
  ta.release();
  tb.release();
});

Deno.test("matmul binds At larger than maxStorageBufferBindingSize in K chunks", async () => {
  const gpu = await getGpu();
  const K = 40_000, M = 1_000, N = 5; // At is 160 MB
  assert(K * M * 4 > gpu.limits.maxBinding);
  const a = randomF32(K * M, 500), b = randomF32(K * N, 501), c = randomF32(M * N, 502);
  const ta = await Tensor.from(gpu, a, [K, M], "at"), tb = await Tensor.from(gpu, b, [K, N], "b");
  const tc = await Tensor.from(gpu, c, [M, N], "c");
  const args = { M, N, K, a: ta.buffer, lda: M, b: tb.buffer, ldb: N, c: tc.buffer, ldc: N };
  const plan = planMatmul(gpu, args);
  assert(plan.kc < K && plan.vecA, `expected a K split on the vec4 path: ${JSON.stringify(plan)}`);
  matmul(gpu, { ...args, accumulate: true });
  const want = matmulRef({ ...args, a, b, c, accumulate: true });
  assertClose(await tc.toF32(), want, 1e-5 * Math.sqrt(K), 1e-5, "big At");
  ta.release();
  tb.release();
  tc.release();
});

Deno.test("matmul binds B larger than maxStorageBufferBindingSize with an offset", async () => {
  const gpu = await getGpu();
  const K = 40_000, M = 5, N = 1_001, bOffset = 3; // B is 160 MB, unaligned rows
  const a = randomF32(K * M, 510), b = randomF32(bOffset + K * N, 511);
  const ta = await Tensor.from(gpu, a, [K, M], "at"),
    tb = await Tensor.from(gpu, b, [b.length], "b");
  const tc = Tensor.empty(gpu, [M, N], "c");
  const args = {
    M,
    N,
    K,
    a: ta.buffer,
    lda: M,
    b: tb.buffer,
    bOffset,
    ldb: N,
    c: tc.buffer,
    ldc: N,
  };
  assert(planMatmul(gpu, args).kc < K, "expected a K split");
  matmul(gpu, args);
  const want = matmulRef({ ...args, a, b, c: new Float32Array(M * N) });
  assertClose(await tc.toF32(), want, 1e-5 * Math.sqrt(K), 1e-5, "big B");
  ta.release();
  tb.release();
  tc.release();
});

Deno.test("matmul writes C larger than maxStorageBufferBindingSize in row chunks", async () => {
  const gpu = await getGpu();
  const M = 40_000, N = 1_000, K = 4; // C is 160 MB
  const a = randomF32(K * M, 520), b = randomF32(K * N, 521);
  const ta = await Tensor.from(gpu, a, [K, M], "at"), tb = await Tensor.from(gpu, b, [K, N], "b");
  const tc = Tensor.empty(gpu, [M, N], "c");
  const args = { M, N, K, a: ta.buffer, lda: M, b: tb.buffer, ldb: N, c: tc.buffer, ldc: N };
  const plan = planMatmul(gpu, args);
  assert(plan.mc < M, `expected an M split: ${JSON.stringify(plan)}`);
  matmul(gpu, args);
  // Rows at the start, around each chunk boundary and at the end; all columns.
  const rows = [0, 1, 2, M - 2, M - 1];
  for (let r = plan.mc; r < M; r += plan.mc) rows.push(r - 2, r - 1, r, r + 1);
  const want = matmulRef({ ...args, a, b, c: new Float32Array(0) }, [], []);
  assertEquals(want.length, 0);
  for (const m of rows) {
    const got = new Float32Array(await gpu.read(tc.buffer, m * N * 4, N * 4));
    const ref = matmulRef({ ...args, M: 1, a, aOffset: m, b, c: new Float32Array(N) });
    assertClose(got, ref, 1e-5 * Math.sqrt(K), 1e-5, `big C row ${m}`);
  }
  ta.release();
  tb.release();
  tc.release();
});

Deno.test("matmul splits batches whose At batches lie farther apart than the binding limit", async () => {
  const gpu = await getGpu();
  const M = 5, N = 6, K = 7, batch = 3;
  const aBatchStride = 34_000_000; // 136 MB between the two A batches (aBatchDiv 2)
  const ta = Tensor.empty(gpu, [aBatchStride + K * M], "at");
  const a0 = randomF32(K * M, 530), a1 = randomF32(K * M, 531);
  await gpu.write(ta.buffer, a0);
  await gpu.write(ta.buffer, a1, aBatchStride * 4);
  const b = randomF32(batch * K * N, 532);
  const tb = await Tensor.from(gpu, b, [batch, K, N], "b");
  const tc = Tensor.empty(gpu, [batch, M, N], "c");
  const args = {
    M,
    N,
    K,
    a: ta.buffer,
    lda: M,
    b: tb.buffer,
    ldb: N,
    c: tc.buffer,
    ldc: N,
    batch,
    aBatchStride,
    bBatchStride: K * N,
    cBatchStride: M * N,
    aBatchDiv: 2,
  };
  assertEquals(planMatmul(gpu, args).zc, 1, "batches per dispatch");
  matmul(gpu, args);
  const got = await tc.toF32();
  for (let z = 0; z < batch; z++) {
    const want = matmulRef({
      M,
      N,
      K,
      a: z < 2 ? a0 : a1,
      lda: M,
      b: b.subarray(z * K * N, (z + 1) * K * N),
      ldb: N,
      c: new Float32Array(M * N),
      ldc: N,
    });
    assertClose(
      got.subarray(z * M * N, (z + 1) * M * N),
      want,
      1e-5 * Math.sqrt(K),
      1e-5,
      `z=${z}`,
    );
  }
  for (const t of [ta, tb, tc]) t.release();
});

Deno.test("matmul with K = 0 zeroes C, or leaves it when accumulating", async () => {
  const gpu = await getGpu();
  const c = randomF32(12, 600);
  const tc = await Tensor.from(gpu, c, [3, 4], "c");
  const ta = Tensor.empty(gpu, [4], "at"), tb = Tensor.empty(gpu, [4], "b");
  const args = {
    M: 3,
    N: 4,
    K: 0,
    a: ta.buffer,
    lda: 3,
    b: tb.buffer,
    ldb: 4,
    c: tc.buffer,
    ldc: 4,
  };
  matmul(gpu, { ...args, accumulate: true });
  assertClose(await tc.toF32(), c, 0, 0, "accumulate K=0");
  matmul(gpu, args);
  assertClose(await tc.toF32(), new Float32Array(12), 0, 0, "K=0");
  for (const t of [ta, tb, tc]) t.release();
});

Deno.test("matmul rejects operands that do not fit their buffers, overlap or alias", async () => {
  const gpu = await getGpu();
  const [a, b, c] = ["a", "b", "c"].map((l) => Tensor.empty(gpu, [16], l));
  const ok = { M: 4, N: 4, K: 2, a: a.buffer, lda: 4, b: b.buffer, ldb: 4, c: c.buffer, ldc: 4 };
  assertThrows(() => matmul(gpu, { ...ok, ldb: 16 }), "operand b (b) needs 80 bytes");
  assertThrows(() => matmul(gpu, { ...ok, K: 5 }), "operand a (a) needs 80 bytes");
  assertThrows(() => matmul(gpu, { ...ok, M: 2, ldc: 3 }), "ldc 3 < N 4");
  assertThrows(() => matmul(gpu, { ...ok, c: a.buffer }), "must not share a buffer");
  assertThrows(() => matmul(gpu, { ...ok, M: 1.5 }), "M must be a non-negative integer");
  matmul(gpu, ok);
  await gpu.sync();
  for (const t of [a, b, c]) t.release();
});

Deno.test("linearFeature and linearToken match the reference", async () => {
  const gpu = await getGpu();
  const inF = 64, outF = 172, T = 7;
  const w = randomF32(inF * outF, 700), x = randomF32(inF * T, 701), y0 = randomF32(outF * T, 702);
  const tw = await Tensor.from(gpu, w, [inF, outF], "wT");
  const tx = await Tensor.from(gpu, x, [inF, T], "xT");
  const ty = await Tensor.from(gpu, y0, [outF, T], "yT");
  const tyTok = Tensor.empty(gpu, [T, outF], "y");
  linearFeature(gpu, tw, tx, ty, true);
  const feat = matmulRef({
    M: outF,
    N: T,
    K: inF,
    a: w,
    lda: outF,
    b: x,
    ldb: T,
    c: y0,
    ldc: T,
    accumulate: true,
  });
  assertClose(await ty.toF32(), feat, 1e-5 * Math.sqrt(inF), 1e-5, "linearFeature");
  linearToken(gpu, tx, tw, tyTok);
  const tok = matmulRef({
    M: T,
    N: outF,
    K: inF,
    a: x,
    lda: T,
    b: w,
    ldb: outF,
    c: new Float32Array(T * outF),
    ldc: outF,
  });
  assertClose(await tyTok.toF32(), tok, 1e-5 * Math.sqrt(inF), 1e-5, "linearToken");
  // y = x W^T is the transpose of y^T = W x^T.
  const got = await tyTok.toF32();
  linearFeature(gpu, tw, tx, ty);
  const gotT = await ty.toF32();
  for (let t = 0; t < T; t++) {
    for (let o = 0; o < outF; o++) assert(Math.abs(got[t * outF + o] - gotT[o * T + t]) < 1e-5);
  }
  assertThrows(() => linearToken(gpu, tx, tw, ty), "do not match");
  for (const t of [tw, tx, ty, tyTok]) t.release();
});
