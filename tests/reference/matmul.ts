// Plain TypeScript reference for shaders/matmul.wgsl: the same arguments as matmul() on
// Float32Arrays, f64 accumulation.
import type { MatmulArgs } from "../../src/kernels/matmul.ts";

export type MatmulRefArgs = Omit<MatmulArgs, "a" | "b" | "c"> & {
  a: Float32Array;
  b: Float32Array;
  c: Float32Array;
};

/**
 * Returns a copy of args.c with C[m, n] (=|+=) sum_k At[k, m] * B[k, n] written for every batch.
 * `rows` and `cols` restrict which (m, n) are computed (all by default), for huge problems.
 */
export function matmulRef(
  args: MatmulRefArgs,
  rows?: number[],
  cols?: number[],
): Float32Array {
  const { M, N, K, a, b, lda, ldb, ldc } = args;
  const aOff = args.aOffset ?? 0, bOff = args.bOffset ?? 0, cOff = args.cOffset ?? 0;
  const batch = args.batch ?? 1;
  const aBS = args.aBatchStride ?? 0, bBS = args.bBatchStride ?? 0, cBS = args.cBatchStride ?? 0;
  const aDiv = args.aBatchDiv ?? 1, bDiv = args.bBatchDiv ?? 1;
  const ms = rows ?? Array.from({ length: M }, (_, i) => i);
  const ns = cols ?? Array.from({ length: N }, (_, i) => i);
  const out = args.c.slice();
  const acc = new Float64Array(ms.length * ns.length);
  for (let z = 0; z < batch; z++) {
    const ab = aOff + Math.floor(z / aDiv) * aBS;
    const bb = bOff + Math.floor(z / bDiv) * bBS;
    const cb = cOff + z * cBS;
    acc.fill(0);
    // k outermost so that rows of At and B are read in order.
    for (let k = 0; k < K; k++) {
      const ak = ab + k * lda, bk = bb + k * ldb;
      for (let i = 0; i < ms.length; i++) {
        const av = a[ak + ms[i]];
        const row = i * ns.length;
        for (let j = 0; j < ns.length; j++) acc[row + j] += av * b[bk + ns[j]];
      }
    }
    for (let i = 0; i < ms.length; i++) {
      for (let j = 0; j < ns.length; j++) {
        const o = cb + ms[i] * ldc + ns[j];
        out[o] = args.accumulate ? out[o] + acc[i * ns.length + j] : acc[i * ns.length + j];
      }
    }
  }
  return out;
}
