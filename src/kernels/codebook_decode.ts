// ClusComp decode of W^T and W together (finetuning needs both layouts of every linear).
import code from "../../shaders/codebook_decode_both.wgsl" with { type: "text" };
import { type BufferRange, fits, type Gpu } from "../gpu/device.ts";

/**
 * wT[r, c] = w[c, r] = centroids[codes[r * cols + floor(c / d)], c % d] for c < out,
 * cols = ceil(out / d): centroids [n, d] f32, codes [inDim, cols] u32, wT [inDim, out] and
 * w [out, inDim]. One dispatch; W^T and W must each fit one binding.
 */
export function decodeCodebookBoth(
  gpu: Gpu,
  centroids: BufferRange,
  codes: BufferRange,
  wT: BufferRange,
  w: BufferRange,
  inDim: number,
  out: number,
  d: number,
): void {
  const cols = Math.ceil(out / d);
  fits("decodeCodebookBoth", "codes", codes, inDim * cols);
  fits("decodeCodebookBoth", "wT", wT, inDim * out);
  fits("decodeCodebookBoth", "w", w, inDim * out);
  fits("decodeCodebookBoth", "centroids", centroids, d);
  const { maxBinding, maxWorkgroups } = gpu.limits;
  if (Math.max(inDim * out, inDim * cols) * 4 > maxBinding) {
    throw new Error(
      `decodeCodebookBoth: [${inDim}, ${out}] exceeds the ${maxBinding}-byte binding limit`,
    );
  }
  const gx = Math.ceil(inDim / 64);
  if (gx > maxWorkgroups || cols > maxWorkgroups) {
    throw new Error(`decodeCodebookBoth: [${inDim}, ${cols}] codes exceed the grid`);
  }
  const range = (b: BufferRange, n: number) => ({
    buffer: b.buffer,
    offset: b.offset ?? 0,
    size: n * 4,
  });
  gpu.dispatch(gpu.pipeline("codebook_decode_both", code, "decode_both"), [
    new Uint32Array([inDim, out, cols, d]),
    centroids,
    range(codes, inDim * cols),
    range(wT, inDim * out),
    range(w, inDim * out),
  ], [gx, cols]);
}
