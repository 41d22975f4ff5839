// ClusComp's vectors: W^T (in x out) cut row by row into d consecutive output-channel weights,
// each row zero-padded from out to ceil(out / d) * d. Vector r * ceil(out / d) + b holds
// W[b * d .. b * d + d - 1, r]. Decoding is W^T = C[codes].reshape(in, -1)[:, :out].
import { transpose } from "../util/matrix.ts";

/** Codes as stored: u8 for n <= 256, u16 for n <= 65,536, u32 otherwise. */
export type Codes = Uint32Array | Uint16Array | Uint8Array;

function checkDims(out: number, inDim: number, d: number): void {
  for (const [name, v] of [["out", out], ["in", inDim], ["d", d]] as const) {
    if (!Number.isSafeInteger(v) || v < 1) {
      throw new Error(`vectorize: ${name} must be a positive integer (got ${v})`);
    }
  }
}

/**
 * The vectors of W [out, in] (row-major, as stored in the checkpoint): x [N, d] with
 * N = in * ceil(out / d), and pad = ceil(out / d) * d - out zeros at the end of each W^T row.
 */
export function vectorize(
  w: Float32Array,
  out: number,
  inDim: number,
  d: number,
): { x: Float32Array; N: number; pad: number } {
  checkDims(out, inDim, d);
  if (w.length !== out * inDim) {
    throw new Error(`vectorize: ${w.length} weights do not fill [${out}, ${inDim}]`);
  }
  const cols = Math.ceil(out / d);
  const N = inDim * cols;
  const x = new Float32Array(N * d);
  const rowLen = cols * d;
  for (let o = 0; o < out; o++) {
    const src = w.subarray(o * inDim, (o + 1) * inDim);
    for (let r = 0; r < inDim; r++) x[r * rowLen + o] = src[r];
  }
  return { x, N, pad: rowLen - out };
}

/** The same vectors from W^T [in, out] (row-major): a copy only when padding is needed. */
export function vectorizeT(
  wT: Float32Array,
  inDim: number,
  out: number,
  d: number,
): { x: Float32Array; N: number; pad: number } {
  checkDims(out, inDim, d);
  if (wT.length !== out * inDim) {
    throw new Error(`vectorizeT: ${wT.length} weights do not fill [${inDim}, ${out}]`);
  }
  const cols = Math.ceil(out / d);
  const pad = cols * d - out;
  if (pad === 0) return { x: wT, N: inDim * cols, pad };
  const x = new Float32Array(inDim * cols * d);
  for (let r = 0; r < inDim; r++) x.set(wT.subarray(r * out, (r + 1) * out), r * cols * d);
  return { x, N: inDim * cols, pad };
}

function checkCodes(centroids: Float32Array, codes: Codes, inDim: number, out: number, d: number) {
  checkDims(out, inDim, d);
  const cols = Math.ceil(out / d);
  if (codes.length !== inDim * cols) {
    throw new Error(`decode: ${codes.length} codes, expected in * ceil(out / d) = ${inDim * cols}`);
  }
  if (centroids.length % d !== 0) {
    throw new Error(`decode: ${centroids.length} centroid values are not a multiple of d = ${d}`);
  }
  const n = centroids.length / d;
  for (let i = 0; i < codes.length; i++) {
    if (codes[i] >= n) throw new Error(`decode: code ${codes[i]} at ${i} >= n = ${n}`);
  }
  return cols;
}

/** W^T [in, out] from centroids [n, d] and codes [in * ceil(out / d)]. */
export function decodeT(
  centroids: Float32Array,
  codes: Codes,
  inDim: number,
  out: number,
  d: number,
): Float32Array {
  const cols = checkCodes(centroids, codes, inDim, out, d);
  const wT = new Float32Array(inDim * out);
  for (let r = 0; r < inDim; r++) {
    for (let b = 0; b < cols; b++) {
      const c = codes[r * cols + b] * d;
      const o0 = b * d;
      const m = Math.min(d, out - o0);
      for (let k = 0; k < m; k++) wT[r * out + o0 + k] = centroids[c + k];
    }
  }
  return wT;
}

/** W [out, in] (the checkpoint's layout) from centroids [n, d] and codes. */
export function decodeW(
  centroids: Float32Array,
  codes: Codes,
  inDim: number,
  out: number,
  d: number,
): Float32Array {
  return transpose(decodeT(centroids, codes, inDim, out, d), inDim, out);
}
