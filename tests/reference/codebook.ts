// Plain TypeScript references for the codebook kernels (src/kernels/codebook.ts).

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
