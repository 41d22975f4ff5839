// Batched transpose of row-major f32 matrices, to switch between token-major and feature-major
// layouts (and between W and W^T).
import code from "../../shaders/transpose.wgsl" with { type: "text" };
import { type BufferRange, fits, type Gpu, grid } from "../gpu/device.ts";

const WG = 64;

/**
 * dst[b, c, r] = src[b, r, c] for src [batch, R, C] and dst [batch, C, R]. Both must fit one
 * binding each and must not overlap.
 */
export function transpose(
  gpu: Gpu,
  src: BufferRange,
  dst: BufferRange,
  R: number,
  C: number,
  batch = 1,
): void {
  const n = batch * R * C;
  fits("transpose", "src", src, n);
  fits("transpose", "dst", dst, n);
  if (n * 4 > gpu.limits.maxBinding) {
    throw new Error(
      `transpose: [${batch}, ${R}, ${C}] exceeds the ${gpu.limits.maxBinding}-byte binding limit`,
    );
  }
  const tiles = batch * Math.ceil(R / 4) * Math.ceil(C / 4);
  const [gx, gy] = grid(Math.ceil(tiles / WG), gpu.limits.maxWorkgroups);
  gpu.dispatch(gpu.pipeline("transpose", code, "transpose"), [
    new Uint32Array([R, C, batch, gx * WG]),
    { buffer: src.buffer, offset: src.offset ?? 0, size: n * 4 },
    { buffer: dst.buffer, offset: dst.offset ?? 0, size: n * 4 },
  ], [gx, gy]);
}
