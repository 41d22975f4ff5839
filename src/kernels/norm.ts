// RMSNorm (HF LlamaRMSNorm in f32) over feature-major activations.
import code from "../../shaders/norm.wgsl" with { type: "text" };
import { type BufferRange, f32bits, fits, type Gpu, grid } from "../gpu/device.ts";

const WG = 64;

/** Largest H whose two loops (2 * H iterations per invocation) stay under Mesa's limit. */
export const RMSNORM_MAX_H = 32_000;

/**
 * out[h, t] = x[h, t] / sqrt(mean_h(x[:, t]^2) + eps) * w[h] for x, out [H, T] feature-major and
 * w [H]. `out` must not overlap `x`.
 */
export function rmsnorm(
  gpu: Gpu,
  x: BufferRange,
  w: BufferRange,
  out: BufferRange,
  H: number,
  T: number,
  eps: number,
): void {
  if (!(H >= 1 && H <= RMSNORM_MAX_H)) {
    throw new Error(`rmsnorm: H = ${H} is outside [1, ${RMSNORM_MAX_H}]`);
  }
  fits("rmsnorm", "x", x, H * T);
  fits("rmsnorm", "w", w, H);
  fits("rmsnorm", "out", out, H * T);
  const [gx, gy] = grid(Math.ceil(T / WG), gpu.limits.maxWorkgroups);
  gpu.dispatch(gpu.pipeline("norm", code, "rmsnorm"), [
    new Uint32Array([H, T, f32bits(eps), gx * WG]),
    x,
    w,
    out,
  ], [gx, gy]);
}
