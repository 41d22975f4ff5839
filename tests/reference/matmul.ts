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
  for (let z = 0; z < batch; z++) {
    const ab = aOff + Math.floor(z / aDiv) * aBS;
    const bb = bOff + Math.floor(z / bDiv) * bBS;
    const cb = cOff + z * cBS;
    for (const m of ms) {
      for (const n of ns) {
        let acc = 0;
        for (let k = 0; k < K; k++) acc += a[ab + k * lda + m] * b[bb + k * ldb + n];
        const i = cb + m * ldc + n;
        out[i] = args.accumulate ? out[i] + acc : acc;
      }
    }
  }
  return out;
}
