// Plain reference of decodeCodebookBoth: W^T [inDim, out] and W [out, inDim] from codes.

/** wT[r, c] = w[c, r] = centroids[codes[r * cols + floor(c / d)] * d + c % d], cols = ceil(out / d). */
export function decodeBothRef(
  centroids: ArrayLike<number>,
  codes: ArrayLike<number>,
  inDim: number,
  out: number,
  d: number,
): { wT: Float32Array; w: Float32Array } {
  const cols = Math.ceil(out / d);
  const wT = new Float32Array(inDim * out), w = new Float32Array(inDim * out);
  for (let r = 0; r < inDim; r++) {
    for (let c = 0; c < out; c++) {
      const x = centroids[codes[r * cols + Math.floor(c / d)] * d + (c % d)];
      wT[r * out + c] = x;
      w[c * inDim + r] = x;
    }
  }
  return { wT, w };
}
