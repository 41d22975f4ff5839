// Residual add and the SwiGLU gate product, in place on flat f32 buffers.
import code from "../../shaders/elementwise.wgsl" with { type: "text" };
import { type BufferRange, type Gpu, grid } from "../gpu/device.ts";

function run(gpu: Gpu, entry: string, x: BufferRange, y: BufferRange, n: number): void {
  const [gx, gy] = grid(Math.ceil(n / 256));
  gpu.dispatch(gpu.pipeline("elementwise", code, entry), [
    new Uint32Array([n, gx * 256]),
    x,
    y,
  ], [gx, gy]);
}

/** x += y over n elements. */
export function add(gpu: Gpu, x: BufferRange, y: BufferRange, n: number): void {
  run(gpu, "add", x, y, n);
}

/** x = silu(x) * y over n elements. */
export function siluMul(gpu: Gpu, x: BufferRange, y: BufferRange, n: number): void {
  run(gpu, "silu_mul", x, y, n);
}
