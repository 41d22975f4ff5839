// Causal (optionally sliding-window) softmax over transposed attention scores, in place. The
// score and P.V products are matmuls: S^T[h] = K_h Q_h^T ([T keys, T queries]) and
// O^T[h] = V^T_h P^T[h].
import code from "../../shaders/attention.wgsl" with { type: "text" };
import { type BufferRange, f32bits, fits, type Gpu, grid } from "../gpu/device.ts";

const WG = 64;

/** Largest key count whose three unrolled passes (3 * ceil(T / 4)) stay under Mesa's limit. */
export const SOFTMAX_MAX_T = 86_000;

/** A block of query columns: the binding holds columns for queries q0 .. q0 + nq - 1. */
export interface QueryBlock {
  q0: number;
  nq: number;
}

/**
 * In place on s = S^T [heads, T, nq] (key j in rows, query column c, global query i = q0 + c;
 * by default q0 = 0, nq = T): s[h, j, c] <- softmax over visible keys of scale * s[h, :, c],
 * 0 for masked keys. Visible keys: j <= i and, when window > 0, j > i - window.
 */
export function causalSoftmax(
  gpu: Gpu,
  s: BufferRange,
  heads: number,
  T: number,
  scale: number,
  window = 0,
  block: QueryBlock = { q0: 0, nq: T },
): void {
  if (!(T >= 1 && T <= SOFTMAX_MAX_T)) {
    throw new Error(`causalSoftmax: T = ${T} keys is outside [1, ${SOFTMAX_MAX_T}]`);
  }
  if (!(window >= 0 && Number.isInteger(window))) {
    throw new Error(`causalSoftmax: window ${window} must be a non-negative integer`);
  }
  const { q0, nq } = block;
  fits("causalSoftmax", "s", s, heads * T * nq);
  const [gx, gy] = grid(Math.ceil((heads * nq) / WG), gpu.limits.maxWorkgroups);
  gpu.dispatch(gpu.pipeline("attention", code, "causal_softmax"), [
    new Uint32Array([heads, T, nq, q0, window, f32bits(scale), gx * WG]),
    s,
  ], [gx, gy]);
}
