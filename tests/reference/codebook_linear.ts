// Plain TypeScript references for the codebook-native linear (src/kernels/codebook_linear.ts)
// and the dense matvecs (src/kernels/matvec.ts): the same layouts on Float32Arrays, f64 sums.
import { unpackCodes } from "../../src/io/pack.ts";

/** A codebook layer on the host: codes unpacked ([in, cols] row-major) or packed u32 words. */
export interface CodebookRefLayer {
  in: number;
  out: number;
  d: number;
  n: number;
  splits: number;
  /** f32 [splits * n, d]. */
  centroids: ArrayLike<number>;
  /** Unpacked codes [in * ceil(out / d)], or packed words with their width. */
  codes: ArrayLike<number> | { words: Uint32Array; bits: number };
}

/** The LinearIO of src/kernels/codebook_linear.ts without the buffers. */
export interface RefIO {
  N: number;
  xOffset?: number;
  ldx: number;
  yOffset?: number;
  yRow: number;
  yCol: number;
  accumulate?: boolean;
}

/** Writes acc (f64 [out, N]) into a copy of y at the io layout, adding when accumulating. */
function store(y: Float32Array, acc: Float64Array, out: number, io: RefIO): Float32Array {
  const res = y.slice();
  const yOff = io.yOffset ?? 0;
  for (let m = 0; m < out; m++) {
    for (let t = 0; t < io.N; t++) {
      const a = yOff + m * io.yRow + t * io.yCol;
      res[a] = (io.accumulate ? res[a] : 0) + acc[m * io.N + t];
    }
  }
  return res;
}

/** x(i, t) from feature-major x at the io layout. */
function xAt(x: ArrayLike<number>, io: RefIO, i: number, t: number): number {
  return x[(io.xOffset ?? 0) + i * io.ldx + t];
}

/**
 * Returns a copy of y with y(m, t) (+)= sum_i x(i, t) * W^T[i, m], where W^T[i, g*d + j] =
 * C[split(i) * n + code(i, g), j] and split(i) = floor(i / (in / splits)).
 */
export function codebookLinearRef(
  layer: CodebookRefLayer,
  x: ArrayLike<number>,
  y: Float32Array,
  io: RefIO,
): Float32Array {
  const { in: inDim, out, d, n, splits, centroids } = layer;
  const cols = Math.ceil(out / d);
  const codes = "words" in layer.codes
    ? unpackCodes(layer.codes.words, inDim * cols, layer.codes.bits)
    : layer.codes;
  const splitRows = inDim / splits;
  const acc = new Float64Array(out * io.N);
  for (let i = 0; i < inDim; i++) {
    const e0 = Math.floor(i / splitRows) * n;
    for (let t = 0; t < io.N; t++) {
      const xv = xAt(x, io, i, t);
      if (xv === 0) continue;
      for (let g = 0; g < cols; g++) {
        const c = (e0 + codes[i * cols + g]) * d;
        for (let j = 0; j < d && g * d + j < out; j++) {
          acc[(g * d + j) * io.N + t] += xv * centroids[c + j];
        }
      }
    }
  }
  return store(y, acc, out, io);
}

/** Returns a copy of y with y(m, t) (+)= sum_i x(i, t) * wT[i * out + m] (W^T [in, out]). */
export function denseMatvecRef(
  wT: ArrayLike<number>,
  inDim: number,
  out: number,
  x: ArrayLike<number>,
  y: Float32Array,
  io: RefIO,
): Float32Array {
  const acc = new Float64Array(out * io.N);
  for (let i = 0; i < inDim; i++) {
    for (let t = 0; t < io.N; t++) {
      const xv = xAt(x, io, i, t);
      if (xv === 0) continue;
      for (let m = 0; m < out; m++) acc[m * io.N + t] += xv * wT[i * out + m];
    }
  }
  return store(y, acc, out, io);
}

/** Returns a copy of y with y(m, t) (+)= sum_i w[m * in + i] * x(i, t) (W [out, in]). */
export function rowsMatvecRef(
  w: ArrayLike<number>,
  out: number,
  inDim: number,
  x: ArrayLike<number>,
  y: Float32Array,
  io: RefIO,
): Float32Array {
  const acc = new Float64Array(out * io.N);
  for (let m = 0; m < out; m++) {
    for (let i = 0; i < inDim; i++) {
      const wv = w[m * inDim + i];
      if (wv === 0) continue;
      for (let t = 0; t < io.N; t++) acc[m * io.N + t] += wv * xAt(x, io, i, t);
    }
  }
  return store(y, acc, out, io);
}

/** Throws unless each call throws an error whose message contains its paired text. */
export function expectErrors(cases: [string, () => void][]): void {
  for (const [want, f] of cases) {
    let msg = "";
    try {
      f();
    } catch (e) {
      msg = (e as Error).message;
    }
    if (!msg.includes(want)) throw new Error(`expected an error naming "${want}", got "${msg}"`);
  }
}
