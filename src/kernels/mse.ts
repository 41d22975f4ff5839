// Finetuning objective: per-token squared error of a block output and its gradient.
import code from "../../shaders/mse.wgsl" with { type: "text" };
import { type BufferRange, f32bits, type Gpu } from "../gpu/device.ts";

export const MSE_MAX_H = 65_000;

/**
 * sq[t] = sum_h (y - target)^2 and dy (+)= scale * (y - target), for [H, T] feature-major.
 * With scale = 2 / (H * T), dy is the gradient of mean((y - target)^2).
 */
export function mseGrad(
  gpu: Gpu,
  y: BufferRange,
  target: BufferRange,
  dy: BufferRange,
  sq: BufferRange,
  H: number,
  T: number,
  scale: number,
  accumulate = false,
): void {
  if (H > MSE_MAX_H) throw new Error(`mseGrad: H = ${H} exceeds ${MSE_MAX_H}`);
  if (T > 65535 * 64) throw new Error(`mseGrad: T = ${T} exceeds the grid`);
  gpu.dispatch(gpu.pipeline("mse", code, "mse"), [
    new Uint32Array([H, T, f32bits(scale), accumulate ? 1 : 0]),
    y,
    target,
    dy,
    sq,
  ], [Math.ceil(T / 64)]);
}
