// Fused log-softmax + NLL over token-major logits, one workgroup per row.
import code from "../../shaders/loss.wgsl" with { type: "text" };
import { type BufferRange, fits, type Gpu, grid } from "../gpu/device.ts";

/** Target id meaning "no target": the row's loss is written as 0. */
export const NO_TARGET = 0xffffffff;

/** Largest vocabulary whose per-lane loop (ceil(V / 256)) stays under Mesa's limit. */
export const NLL_MAX_V = 256 * 65_000;

/**
 * out[t0 + r] = logsumexp(logits[r, :]) - logits[r, targets[t0 + r]] for logits [T, V]
 * token-major (rows t0 .. t0 + T - 1 of a longer sequence when bound in row chunks), targets
 * [t0 + T] u32 and out [t0 + T] f32. A target of NO_TARGET writes 0; any other target >= V
 * writes NaN.
 */
export function nll(
  gpu: Gpu,
  logits: BufferRange,
  targets: BufferRange,
  out: BufferRange,
  T: number,
  V: number,
  t0 = 0,
): void {
  if (!(V >= 1 && V <= NLL_MAX_V)) throw new Error(`nll: V = ${V} is outside [1, ${NLL_MAX_V}]`);
  fits("nll", "logits", logits, T * V);
  fits("nll", "targets", targets, t0 + T);
  fits("nll", "out", out, t0 + T);
  const [gx, gy] = grid(T, gpu.limits.maxWorkgroups);
  gpu.dispatch(gpu.pipeline("loss", code, "nll"), [
    new Uint32Array([T, V, t0, gx]),
    logits,
    targets,
    out,
  ], [gx, gy]);
}
