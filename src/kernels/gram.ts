// Second moments of a layer's inputs over calibration tokens, accumulated on the GPU: the
// diagonal sum_t x_i^2 and the Gram matrix sum_t x x^T (GPTQ's Hessian, up to a factor).
import code from "../../shaders/gram.wgsl" with { type: "text" };
import { type BufferRange, fits, type Gpu, grid } from "../gpu/device.ts";
import { matmul } from "./matmul.ts";
import { transpose } from "./transpose.ts";

/** Tokens per dispatch: each invocation's loop stays well under Mesa's 65,535 iterations. */
export const GRAM_MAX_T = 16_384;

/** Feature-major activations: F rows of stride `ld` floats; tokens are columns col0 .. col0+T-1. */
export interface GramInput {
  x: BufferRange;
  F: number;
  T: number;
  ld: number;
  col0?: number;
}

function run(
  gpu: Gpu,
  entry: "diag" | "gram",
  a: GramInput,
  acc: BufferRange,
  outputs: number,
  r0: number,
  rows: number,
): void {
  const col0 = a.col0 ?? 0;
  if (a.T < 1 || col0 + a.T > a.ld) {
    throw new Error(`gram: tokens [${col0}, ${col0 + a.T}) do not fit rows of ${a.ld}`);
  }
  fits("gram", "x", a.x, (a.F - 1) * a.ld + col0 + a.T);
  const [gx, gy] = grid(Math.ceil(outputs / 64), gpu.limits.maxWorkgroups);
  const pipe = gpu.pipeline("gram", code, entry);
  for (let t0 = 0; t0 < a.T; t0 += GRAM_MAX_T) {
    const T = Math.min(GRAM_MAX_T, a.T - t0);
    gpu.dispatch(pipe, [
      new Uint32Array([a.F, T, a.ld, col0 + t0, r0, rows, gx * 64, 0]),
      a.x,
      acc,
    ], [gx, gy]);
  }
}

/** acc[i] += sum_t x[i, t]^2 for i < F. */
export function accumulateDiag(gpu: Gpu, a: GramInput, acc: BufferRange): void {
  fits("gram", "acc", acc, a.F);
  run(gpu, "diag", a, acc, a.F, 0, a.F);
}

/** acc[(i - r0) * F + j] += sum_t x[i, t] x[j, t] for rows i in [r0, r0 + rows), j < F. */
export function accumulateGram(
  gpu: Gpu,
  a: GramInput,
  acc: BufferRange,
  r0 = 0,
  rows = a.F,
): void {
  if (r0 < 0 || rows < 1 || r0 + rows > a.F) {
    throw new Error(`gram: rows [${r0}, ${r0 + rows}) outside [0, ${a.F})`);
  }
  fits("gram", "acc", acc, rows * a.F);
  run(gpu, "gram", a, acc, rows * a.F, r0, rows);
}

/** Gram rows per accumulator so that [rows, F] f32 fits one binding of `maxBinding` bytes. */
export function gramRowsPerBuffer(F: number, maxBinding: number): number {
  return Math.max(1, Math.min(F, Math.floor(maxBinding / (4 * F))));
}

/**
 * The same Gram rows as accumulateGram, through the tiled matmul: x [F, ld] is transposed into
 * `scratch` (token-major [ld, F], F * ld floats, one binding) and each row block is one
 * accumulating matmul over the tokens. ~50x the naive kernel on llvmpipe at F = 768.
 */
export function accumulateGramTiled(
  gpu: Gpu,
  a: GramInput,
  scratch: BufferRange,
  parts: { acc: BufferRange; r0: number; rows: number }[],
): void {
  const col0 = a.col0 ?? 0;
  if (a.T < 1 || col0 + a.T > a.ld) {
    throw new Error(`gram: tokens [${col0}, ${col0 + a.T}) do not fit rows of ${a.ld}`);
  }
  transpose(gpu, { buffer: a.x.buffer, offset: a.x.offset ?? 0 }, scratch, a.F, a.ld);
  const base = (scratch.offset ?? 0) / 4 + col0 * a.F;
  for (const p of parts) {
    fits("gram", "acc", p.acc, p.rows * a.F);
    matmul(gpu, {
      M: p.rows,
      N: a.F,
      K: a.T,
      a: scratch.buffer,
      aOffset: base + p.r0,
      lda: a.F,
      b: scratch.buffer,
      bOffset: base,
      ldb: a.F,
      c: p.acc.buffer,
      cOffset: (p.acc.offset ?? 0) / 4,
      ldc: a.F,
      accumulate: true,
    });
  }
}
