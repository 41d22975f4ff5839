// Backward kernels for finetuning and the fixture trainer: RMSNorm, RoPE, causal softmax,
// SwiGLU gate product, softmax cross-entropy and the embedding lookup. Layouts match the
// forward kernels (feature-major activations, transposed attention scores, token-major logits).
import normCode from "../../shaders/norm_backward.wgsl" with { type: "text" };
import dwCode from "../../shaders/norm_dw.wgsl" with { type: "text" };
import ropeCode from "../../shaders/rope.wgsl" with { type: "text" };
import softmaxCode from "../../shaders/softmax_backward.wgsl" with { type: "text" };
import siluCode from "../../shaders/silu_backward.wgsl" with { type: "text" };
import xentCode from "../../shaders/xent_backward.wgsl" with { type: "text" };
import { type BufferRange, f32bits, fits, type Gpu, grid } from "../gpu/device.ts";
import type { QueryBlock } from "./attention.ts";
import { buildCodeIndex, type CodeIndex, type GpuCodeIndex, segmentSum } from "./codebook.ts";

/** Largest H whose two unrolled column passes (2 * ceil(H / 4)) stay under Mesa's limit. */
export const RMSNORM_BACKWARD_MAX_H = 130_000;
/** Tokens one rmsnorm_dw dispatch sums per feature (64 lanes, 60,000 iterations each). */
const DW_CHUNK_T = 64 * 60_000;

/**
 * Gradient of y = rmsnorm(x) * w (shaders/norm.wgsl) with w fixed, feature-major:
 *   dx[h, t] (+)= r w[h] dy[h, t] - x[h, t] r^3 / H * sum_h' w[h'] dy[h', t] x[h', t]
 * with r = 1 / sqrt(mean_h(x[:, t]^2) + eps); x, dy, dx [H, T], w [H]. dx must not overlap x or
 * dy. With `dw` [H] (and the scratch `rstd` [T] it needs), also
 *   dw[h] += sum_t dy[h, t] x[h, t] r[t]
 * summed in a fixed order (deterministic); dw accumulates (for micro-batches) unless
 * `accumulateDw` is false. `accumulate` adds into dx instead of writing it.
 */
export function rmsnormBackward(
  gpu: Gpu,
  x: BufferRange,
  w: BufferRange,
  dy: BufferRange,
  dx: BufferRange,
  H: number,
  T: number,
  eps: number,
  opts: { accumulate?: boolean; dw?: BufferRange; rstd?: BufferRange; accumulateDw?: boolean } = {},
): void {
  if (!(H >= 1 && H <= RMSNORM_BACKWARD_MAX_H)) {
    throw new Error(`rmsnormBackward: H = ${H} is outside [1, ${RMSNORM_BACKWARD_MAX_H}]`);
  }
  fits("rmsnormBackward", "x", x, H * T);
  fits("rmsnormBackward", "w", w, H);
  fits("rmsnormBackward", "dy", dy, H * T);
  fits("rmsnormBackward", "dx", dx, H * T);
  const acc = opts.accumulate ? 1 : 0;
  const { dw, rstd } = opts;
  if (dw && !rstd) throw new Error("rmsnormBackward: dw needs a scratch rstd [T] binding");
  const max = gpu.limits.maxWorkgroups;
  const [gx, gy] = grid(Math.ceil(T / 64), max);
  const params = new Uint32Array([H, T, f32bits(eps), gx * 64, acc]);
  if (dw && rstd) {
    fits("rmsnormBackward", "dw", dw, H);
    fits("rmsnormBackward", "rstd", rstd, T);
    gpu.dispatch(gpu.pipeline("norm_backward", normCode, "rmsnorm_backward_rstd"), [
      params,
      x,
      w,
      dy,
      dx,
      rstd,
    ], [gx, gy]);
    const pipe = gpu.pipeline("norm_dw", dwCode, "rmsnorm_dw");
    const [hx, hy] = grid(H, max);
    for (let t0 = 0; t0 < T; t0 += DW_CHUNK_T) {
      const tn = Math.min(DW_CHUNK_T, T - t0);
      const first = t0 > 0 || (opts.accumulateDw ?? true) ? 1 : 0;
      gpu.dispatch(pipe, [new Uint32Array([H, T, t0, tn, hx, first]), x, dy, rstd, dw], [hx, hy]);
    }
  } else {
    gpu.dispatch(gpu.pipeline("norm_backward", normCode, "rmsnorm_backward"), [
      params,
      x,
      w,
      dy,
      dx,
    ], [gx, gy]);
  }
}

/**
 * Gradient of rope() (src/kernels/rope.ts), in place on g [nHeads * headDim, T] feature-major:
 * each pair (g[d], g[d + headDim/2]) is rotated by the negative angle, with the same cos, sin
 * [T, headDim / 2] tables as the forward.
 */
export function ropeBackward(
  gpu: Gpu,
  g: BufferRange,
  cos: BufferRange,
  sin: BufferRange,
  nHeads: number,
  headDim: number,
  T: number,
): void {
  if (headDim % 2 !== 0 || headDim < 2) {
    throw new Error(`ropeBackward: headDim ${headDim} must be even`);
  }
  if (nHeads > 60_000) throw new Error(`ropeBackward: ${nHeads} heads exceed the loop limit`);
  const half = headDim / 2;
  fits("ropeBackward", "g", g, nHeads * headDim * T);
  fits("ropeBackward", "cos", cos, T * half);
  fits("ropeBackward", "sin", sin, T * half);
  const [gx, gy] = grid(Math.ceil((half * T) / 64), gpu.limits.maxWorkgroups);
  // The forward shader rotating by the negative angle.
  gpu.dispatch(gpu.pipeline("rope", ropeCode, "rope", { SIGN: -1 }), [
    new Uint32Array([nHeads, headDim, T, gx * 64, T, 0]),
    g,
    cos,
    sin,
  ], [gx, gy]);
}

/** Largest key count whose two unrolled passes (2 * ceil(T / 4)) stay under Mesa's limit. */
export const SOFTMAX_BACKWARD_MAX_T = 130_000;

/**
 * Gradient of causalSoftmax (src/kernels/attention.ts) with respect to the raw scores, in place
 * on g: p and g are [heads, T, nq] (key j in rows, query column c, global query i = q0 + c);
 * g holds dL/dp on entry and dL/ds on return:
 *   ds[j, c] = scale * p[j, c] * (dp[j, c] - sum_j' p[j', c] dp[j', c])  for visible keys,
 *   ds[j, c] = 0 for masked keys (j > i, or j <= i - window when window > 0).
 * Same arguments as the forward: `scale` is the factor applied to s before the softmax.
 */
export function causalSoftmaxBackward(
  gpu: Gpu,
  p: BufferRange,
  g: BufferRange,
  heads: number,
  T: number,
  scale: number,
  window = 0,
  block: QueryBlock = { q0: 0, nq: T },
): void {
  if (!(T >= 1 && T <= SOFTMAX_BACKWARD_MAX_T)) {
    throw new Error(
      `causalSoftmaxBackward: T = ${T} keys is outside [1, ${SOFTMAX_BACKWARD_MAX_T}]`,
    );
  }
  if (!(window >= 0 && Number.isInteger(window))) {
    throw new Error(`causalSoftmaxBackward: window ${window} must be a non-negative integer`);
  }
  const { q0, nq } = block;
  fits("causalSoftmaxBackward", "p", p, heads * T * nq);
  fits("causalSoftmaxBackward", "g", g, heads * T * nq);
  const [gx, gy] = grid(Math.ceil((heads * nq) / 64), gpu.limits.maxWorkgroups);
  gpu.dispatch(gpu.pipeline("softmax_backward", softmaxCode, "causal_softmax_backward"), [
    new Uint32Array([heads, T, nq, q0, window, f32bits(scale), gx * 64]),
    p,
    g,
  ], [gx, gy]);
}

/**
 * Gradient of h = silu(g) * u over n elements: dg = dh * u * sg * (1 + g (1 - sg)),
 * du = dh * silu(g), sg = sigmoid(g). Outputs must not overlap the inputs.
 */
export function siluMulBackward(
  gpu: Gpu,
  g: BufferRange,
  u: BufferRange,
  dh: BufferRange,
  dg: BufferRange,
  du: BufferRange,
  n: number,
): void {
  for (const [name, r] of [["g", g], ["u", u], ["dh", dh], ["dg", dg], ["du", du]] as const) {
    fits("siluMulBackward", name, r, n);
  }
  const [gx, gy] = grid(Math.ceil(n / 256), gpu.limits.maxWorkgroups);
  gpu.dispatch(gpu.pipeline("silu_backward", siluCode, "silu_mul_backward"), [
    new Uint32Array([n, gx * 256]),
    dh,
    g,
    u,
    dg,
    du,
  ], [gx, gy]);
}

/** As siluMulBackward, overwriting g with dg and u with du. */
export function siluMulBackwardInPlace(
  gpu: Gpu,
  g: BufferRange,
  u: BufferRange,
  dh: BufferRange,
  n: number,
): void {
  for (const [name, r] of [["g", g], ["u", u], ["dh", dh]] as const) {
    fits("siluMulBackwardInPlace", name, r, n);
  }
  const [gx, gy] = grid(Math.ceil(n / 256), gpu.limits.maxWorkgroups);
  gpu.dispatch(gpu.pipeline("silu_backward", siluCode, "silu_mul_backward_inplace"), [
    new Uint32Array([n, gx * 256]),
    dh,
    g,
    u,
  ], [gx, gy]);
}

/** Target id meaning "no target" (from loss.ts): the row's gradient is 0. */
export { NO_TARGET } from "./loss.ts";
/** Largest vocabulary whose per-lane loops (2 * ceil(V / 256)) stay under Mesa's limit. */
export const XENT_MAX_V = 256 * 32_000;

/**
 * Gradient of scale * sum_r nll(logits[r], targets[t0 + r]) with respect to token-major logits
 * [T, V] (rows t0 .. t0 + T - 1 of a longer sequence when bound in row chunks):
 *   dlogits[r, j] = scale * (softmax(logits[r, :])[j] - (j == targets[t0 + r]))
 * A NO_TARGET row gets zeros; any other target >= V gets NaNs. Pass the same range as logits
 * and dlogits to overwrite the logits in place; otherwise the two must not overlap.
 */
export function softmaxXentBackward(
  gpu: Gpu,
  logits: BufferRange,
  targets: BufferRange,
  dlogits: BufferRange,
  T: number,
  V: number,
  scale: number,
  t0 = 0,
): void {
  if (!(V >= 1 && V <= XENT_MAX_V)) {
    throw new Error(`softmaxXentBackward: V = ${V} is outside [1, ${XENT_MAX_V}]`);
  }
  fits("softmaxXentBackward", "logits", logits, T * V);
  fits("softmaxXentBackward", "targets", targets, t0 + T);
  fits("softmaxXentBackward", "dlogits", dlogits, T * V);
  const inPlace = dlogits.buffer === logits.buffer;
  if (inPlace && (dlogits.offset ?? 0) !== (logits.offset ?? 0)) {
    throw new Error("softmaxXentBackward: dlogits overlaps logits at a different offset");
  }
  const [gx, gy] = grid(T, gpu.limits.maxWorkgroups);
  const params = new Uint32Array([T, V, t0, gx, f32bits(scale)]);
  if (inPlace) {
    gpu.dispatch(gpu.pipeline("xent_backward", xentCode, "xent_backward_inplace"), [
      params,
      targets,
      logits,
    ], [gx, gy]);
  } else {
    gpu.dispatch(gpu.pipeline("xent_backward", xentCode, "xent_backward"), [
      params,
      targets,
      logits,
      dlogits,
    ], [gx, gy]);
  }
}

/**
 * The index of token positions by id for embedBackward: `ids` [T] < vocab, H the hidden size.
 * Upload it with uploadCodeIndex (src/kernels/codebook.ts).
 */
export function buildTokenIndex(
  ids: ArrayLike<number>,
  vocab: number,
  H: number,
  pieceItems?: number,
): CodeIndex {
  return buildCodeIndex(ids, vocab, ids.length, H, H, { pieceItems, layout: "features" });
}

/**
 * Gradient of the embedding lookup out[h, t] = table[ids[t], h]:
 *   dTable[v, h] (+)= sum over the tokens t with ids[t] = v of dx[h, t]
 * for dx [H, T] feature-major (one binding) and dTable [V, H] row-major, with the token index
 * from buildTokenIndex. Deterministic: a fixed summation order, no atomics. Rows of tokens that
 * do not occur are written 0 (kept with accumulate).
 */
export function embedBackward(
  gpu: Gpu,
  dx: BufferRange,
  tokens: GpuCodeIndex,
  dTable: BufferRange,
  opts: { accumulate?: boolean } = {},
): void {
  const ix = tokens.index;
  if (ix.layout !== "features") {
    throw new Error("embedBackward: the index was not built by buildTokenIndex");
  }
  const H = ix.d, T = ix.inDim;
  fits("embedBackward", "dx", dx, H * T);
  fits("embedBackward", "dTable", dTable, ix.n * H);
  if (H * T * 4 > gpu.limits.maxBinding) {
    throw new Error(
      `embedBackward: dx [${H}, ${T}] exceeds the ${gpu.limits.maxBinding}-byte binding limit`,
    );
  }
  const whole = () => ({ buffer: dx.buffer, offset: dx.offset ?? 0, size: H * T * 4 });
  segmentSum(gpu, tokens, whole, dTable, opts.accumulate ?? false, "embedBackward");
}
