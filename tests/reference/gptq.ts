// Plain reference of GPTQ (src/cluster/gptq.ts): float64 throughout, H^-1 by Gauss-Jordan, its
// upper Cholesky factor computed directly, and one column at a time with the whole rest of W
// updated after every column (no lazy batches, no GPU).
import type { RtnResult } from "../../src/cluster/rtn.ts";

export interface GptqRefOptions {
  bits: number;
  group: number;
  actOrder: boolean;
  damp: number;
}

/** W [out, in] row-major; gram = sum over tokens of x x^T, [in, in]. */
export function gptqReference(
  w: ArrayLike<number>,
  out: number,
  n: number,
  gram: ArrayLike<number>,
  tokens: number,
  o: GptqRefOptions,
): RtnResult {
  const qmax = 2 ** o.bits - 1, G = o.group, groups = Math.ceil(n / G);
  const W = Float64Array.from(w);
  const H = new Float64Array(n * n);
  for (let i = 0; i < n * n; i++) H[i] = (2 * gram[i]) / tokens;
  for (let i = 0; i < n; i++) {
    if (H[i * n + i] === 0) {
      H[i * n + i] = 1;
      for (let r = 0; r < out; r++) W[r * n + i] = 0;
    }
  }
  const scales = new Float32Array(out * groups);
  const zeros = new Uint8Array(out * groups);
  // The RTN quantizer's parameters for W's columns [c0, c1) (from `src` [out, n]).
  const params = (src: Float64Array, g: number, c0: number, c1: number) => {
    for (let r = 0; r < out; r++) {
      let lo = 0, hi = 0;
      for (let c = c0; c < c1; c++) {
        lo = Math.min(lo, src[r * n + c]);
        hi = Math.max(hi, src[r * n + c]);
      }
      let s = Math.f16round((hi - lo) / qmax);
      if (!(s > 0)) s = Math.f16round(1e-8) || 6e-8;
      scales[r * groups + g] = s;
      zeros[r * groups + g] = Math.min(qmax, Math.max(0, Math.round(-lo / s)));
    }
  };
  if (o.actOrder) {
    for (let g = 0; g < groups; g++) params(W, g, g * G, Math.min(n, (g + 1) * G));
  }
  const order = Array.from({ length: n }, (_, i) => i);
  if (o.actOrder) {
    order.sort((a, b) => H[b * n + b] - H[a * n + a] || a - b);
  }
  // Permuted W and H.
  const Wp = new Float64Array(out * n), Hp = new Float64Array(n * n);
  for (let r = 0; r < out; r++) for (let p = 0; p < n; p++) Wp[r * n + p] = W[r * n + order[p]];
  let mean = 0;
  for (let i = 0; i < n; i++) mean += H[i * n + i];
  mean /= n;
  for (let a = 0; a < n; a++) {
    for (let b = 0; b < n; b++) Hp[a * n + b] = H[order[a] * n + order[b]];
    Hp[a * n + a] += o.damp * mean;
  }
  const U = upperCholesky(gaussJordanInverse(Hp, n), n);
  const q = new Uint8Array(out * n);
  for (let p = 0; p < n; p++) {
    const col = order[p];
    if (!o.actOrder && p % G === 0) params(Wp, p / G, p, Math.min(n, p + G));
    const g = Math.floor(col / G);
    for (let r = 0; r < out; r++) {
      const s = scales[r * groups + g], z = zeros[r * groups + g];
      const w0 = Wp[r * n + p];
      const v = Math.min(qmax, Math.max(0, Math.round(w0 / s) + z));
      q[r * n + col] = v;
      const e = (w0 - (v - z) * s) / U[p * n + p];
      for (let c = p + 1; c < n; c++) Wp[r * n + c] -= e * U[p * n + c];
    }
  }
  return { q, scales, zeros };
}

/** A^-1 by Gauss-Jordan elimination with partial pivoting. */
export function gaussJordanInverse(A: Float64Array, n: number): Float64Array {
  const a = Float64Array.from(A);
  const x = new Float64Array(n * n);
  for (let i = 0; i < n; i++) x[i * n + i] = 1;
  for (let c = 0; c < n; c++) {
    let piv = c;
    for (let r = c + 1; r < n; r++) {
      if (Math.abs(a[r * n + c]) > Math.abs(a[piv * n + c])) piv = r;
    }
    if (a[piv * n + c] === 0) throw new Error("gaussJordanInverse: singular");
    for (let k = 0; k < n; k++) {
      [a[c * n + k], a[piv * n + k]] = [a[piv * n + k], a[c * n + k]];
      [x[c * n + k], x[piv * n + k]] = [x[piv * n + k], x[c * n + k]];
    }
    const d = a[c * n + c];
    for (let k = 0; k < n; k++) {
      a[c * n + k] /= d;
      x[c * n + k] /= d;
    }
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const f = a[r * n + c];
      if (f === 0) continue;
      for (let k = 0; k < n; k++) {
        a[r * n + k] -= f * a[c * n + k];
        x[r * n + k] -= f * x[c * n + k];
      }
    }
  }
  return x;
}

/** Upper U with U^T U = A (A symmetric positive definite). */
export function upperCholesky(A: Float64Array, n: number): Float64Array {
  const U = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    let s = A[i * n + i];
    for (let k = 0; k < i; k++) s -= U[k * n + i] ** 2;
    if (!(s > 0)) throw new Error(`upperCholesky: not positive definite at ${i}`);
    U[i * n + i] = Math.sqrt(s);
    for (let j = i + 1; j < n; j++) {
      let t = A[i * n + j];
      for (let k = 0; k < i; k++) t -= U[k * n + i] * U[k * n + j];
      U[i * n + j] = t / U[i * n + i];
    }
  }
  return U;
}
