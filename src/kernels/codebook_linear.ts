// Codebook-native linear layers: y = x W for a ClusComp layer held as packed codes plus its
// codebook, never expanded to a dense matrix. W^T [in, out] is cut along the output channels
// into d-vectors: y[g*d + j] = sum_i x[i] * C[split(i) * n + code(i, g), j] for j < d and
// g*d + j < out, code(i, g) = packed code number i * cols + g, cols = ceil(out / d).
// (SKELETON: interface fixed; implementation in progress.)
import type { Gpu } from "../gpu/device.ts";

/** A ClusComp linear layer on the GPU. */
export interface CodebookLayer {
  /** Input features (rows of W^T). */
  in: number;
  /** Output features (columns of W^T). */
  out: number;
  d: number;
  /** Entries per codebook. */
  n: number;
  /** Codebooks along the input rows: rows [s * in / splits, (s + 1) * in / splits) use codebook s. */
  splits: number;
  /** Bits per code (src/format/pack.ts codeBits(n)). */
  bits: number;
  /** f32 [splits * n, d]. */
  centroids: GPUBuffer;
  /** u32 words: the packed codes of [in, ceil(out / d)] row-major (src/format/pack.ts). */
  codes: GPUBuffer;
}

/**
 * Input and output of a linear over N tokens. x^T is feature-major: element (i, t) at
 * xOffset + i * ldx + t (elements, f32). y element (m, t) at yOffset + m * yRow + t * yCol:
 * feature-major output [out, N] has yRow = ldy, yCol = 1; token-major [N, out] has yRow = 1,
 * yCol = ldy. Buffers are bound whole (each must fit one binding); offsets travel as uniforms.
 */
export interface LinearIO {
  N: number;
  x: GPUBuffer;
  xOffset?: number;
  ldx: number;
  y: GPUBuffer;
  yOffset?: number;
  yRow: number;
  yCol: number;
  /** y += result instead of y = result. */
  accumulate?: boolean;
}

export type CodebookForm = "matvec" | "lut" | "tile";

/** y (+)= x W for a codebook layer; `form` defaults to chooseForm's pick. */
export function codebookLinear(
  _gpu: Gpu,
  _layer: CodebookLayer,
  _io: LinearIO,
  _form?: CodebookForm,
): void {
  throw new Error("codebookLinear: not implemented yet");
}

/** The fastest form for this shape on this driver (measured; see the bench). */
export function chooseForm(_layer: CodebookLayer, _N: number): CodebookForm {
  return "tile";
}
