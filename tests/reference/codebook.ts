// Plain TypeScript references for the codebook kernels (src/kernels/codebook.ts).
import type { CodeIndex } from "../../src/kernels/codebook.ts";

/** W^T [inDim, out]: wT[r, c] = C[codes[r * cols + floor(c / d)], c % d], cols = ceil(out / d). */
export function decodeCodebookRef(
  centroids: ArrayLike<number>,
  codes: ArrayLike<number>,
  inDim: number,
  out: number,
  d: number,
): Float64Array {
  const cols = Math.ceil(out / d);
  const wT = new Float64Array(inDim * out);
  for (let r = 0; r < inDim; r++) {
    for (let c = 0; c < out; c++) {
      wT[r * out + c] = centroids[codes[r * cols + Math.floor(c / d)] * d + (c % d)];
    }
  }
  return wT;
}

/**
 * dC [n, d] of sum(dwT * decodeCodebookRef(C)), straight from the codes (no index): every
 * vector adds its valid components to its centroid's row.
 */
export function codebookGradRef(
  dwT: ArrayLike<number>,
  codes: ArrayLike<number>,
  n: number,
  inDim: number,
  out: number,
  d: number,
): Float64Array {
  const cols = Math.ceil(out / d);
  const dC = new Float64Array(n * d);
  for (let r = 0; r < inDim; r++) {
    for (let cv = 0; cv < cols; cv++) {
      const k = codes[r * cols + cv];
      for (let j = 0; j < d && cv * d + j < out; j++) dC[k * d + j] += dwT[r * out + cv * d + j];
    }
  }
  return dC;
}

/**
 * W^T [inDim, out] from a codebook index alone (no codes): segment s = chunk * n + k of the
 * index lists the vectors v = r * cols + cv whose code is k; each writes C[k] at row r, columns
 * cv * d .. min(out, cv * d + d) - 1. Throws if an element is written twice or never.
 */
export function decodeFromIndexRef(centroids: ArrayLike<number>, ix: CodeIndex): Float64Array {
  const { n, inDim, out, d, cols, offsets, positions } = ix;
  const wT = new Float64Array(inDim * out).fill(NaN);
  for (let s = 0; s + 1 < offsets.length; s++) {
    const k = s % n;
    for (let q = offsets[s]; q < offsets[s + 1]; q++) {
      const v = positions[q], r = Math.floor(v / cols), cv = v % cols;
      for (let j = 0; j < d && cv * d + j < out; j++) {
        const e = r * out + cv * d + j;
        if (!Number.isNaN(wT[e])) throw new Error(`decodeFromIndexRef: element ${e} written twice`);
        wT[e] = centroids[k * d + j];
      }
    }
  }
  const missing = wT.findIndex((x) => Number.isNaN(x));
  if (missing >= 0) throw new Error(`decodeFromIndexRef: element ${missing} never written`);
  return wT;
}
