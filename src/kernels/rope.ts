// Rotary position embedding (HF rotate_half layout) on feature-major Q^T / K^T, with cos/sin
// tables computed on the host from float64 angles.
import code from "../../shaders/rope.wgsl" with { type: "text" };
import { type BufferRange, fits, type Gpu, grid } from "../gpu/device.ts";

const WG = 64;

/**
 * cos/sin tables [T, invFreq.length] row-major for positions pos0 .. pos0 + T - 1:
 * angle = (pos0 + t) * invFreq[d] in float64, then cos and sin rounded to f32.
 */
export function ropeTables(
  invFreq: Float64Array,
  T: number,
  pos0 = 0,
): { cos: Float32Array; sin: Float32Array } {
  const half = invFreq.length;
  const cos = new Float32Array(T * half), sin = new Float32Array(T * half);
  for (let t = 0; t < T; t++) {
    const pos = pos0 + t;
    for (let d = 0; d < half; d++) {
      const a = pos * invFreq[d];
      cos[t * half + d] = Math.cos(a);
      sin[t * half + d] = Math.sin(a);
    }
  }
  return { cos, sin };
}

/**
 * In place on x [nHeads * headDim, T] feature-major: for every head and d < headDim / 2,
 * (x[d], x[d + headDim/2]) <- (x1 cos - x2 sin, x2 cos + x1 sin) with cos, sin [T, headDim / 2]
 * from ropeTables (row t is the position of token t). With `cols`, x has rows of `ld` elements
 * and token t sits at column col0 + t (a KV cache rotated in place for new tokens).
 */
export function rope(
  gpu: Gpu,
  x: BufferRange,
  cos: BufferRange,
  sin: BufferRange,
  nHeads: number,
  headDim: number,
  T: number,
  cols: { ld: number; col0: number } = { ld: T, col0: 0 },
): void {
  if (headDim % 2 !== 0 || headDim < 2) throw new Error(`rope: headDim ${headDim} must be even`);
  const { ld, col0 } = cols;
  if (!(col0 >= 0 && col0 + T <= ld)) {
    throw new Error(`rope: columns ${col0} .. ${col0 + T - 1} do not fit rows of ${ld}`);
  }
  if (nHeads > 60_000) throw new Error(`rope: ${nHeads} heads exceed the loop limit`);
  const half = headDim / 2;
  fits("rope", "x", x, (nHeads * headDim - 1) * ld + col0 + T);
  fits("rope", "cos", cos, T * half);
  fits("rope", "sin", sin, T * half);
  const [gx, gy] = grid(Math.ceil((half * T) / WG), gpu.limits.maxWorkgroups);
  gpu.dispatch(gpu.pipeline("rope", code, "rope"), [
    new Uint32Array([nHeads, headDim, T, gx * WG, ld, col0]),
    x,
    cos,
    sin,
  ], [gx, gy]);
}
