// AdamW with PyTorch's semantics (torch.optim.AdamW), one elementwise step on flat f32 buffers.
import code from "../../shaders/adamw.wgsl" with { type: "text" };
import { type BufferRange, f32bits, fits, type Gpu, grid } from "../gpu/device.ts";

export interface AdamWStep {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1 for the first step (PyTorch's state["step"] after its increment). */
  step: number;
}

/**
 * The f32 scalars of one step, computed in float64 as PyTorch does in Python floats:
 * decay = 1 - lr * wd, stepSize = lr / (1 - beta1^step), bc2sqrt = sqrt(1 - beta2^step).
 */
export function adamwScalars(s: AdamWStep): {
  decay: number;
  stepSize: number;
  bc2sqrt: number;
} {
  if (!(Number.isInteger(s.step) && s.step >= 1)) {
    throw new Error(`adamw: step ${s.step} must be an integer >= 1`);
  }
  return {
    decay: 1 - s.lr * s.weightDecay,
    stepSize: s.lr / (1 - s.beta1 ** s.step),
    bc2sqrt: Math.sqrt(1 - s.beta2 ** s.step),
  };
}

/**
 * One AdamW step over n elements, in place on param, m (exp_avg) and v (exp_avg_sq):
 *   param *= 1 - lr * wd;  m += (1 - beta1) (grad - m);  v = beta2 v + (1 - beta2) grad^2;
 *   param -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps).
 * m and v start as zeros. Bound in chunks past the binding limit (offsets must be aligned).
 */
export function adamw(
  gpu: Gpu,
  param: BufferRange,
  grad: BufferRange,
  m: BufferRange,
  v: BufferRange,
  n: number,
  s: AdamWStep,
): void {
  const sc = adamwScalars(s);
  const bufs = [param, grad, m, v];
  ["param", "grad", "m", "v"].forEach((name, i) => fits("adamw", name, bufs[i], n));
  const { align, maxBinding } = gpu.limits;
  const per = Math.floor(maxBinding / align) * align / 4;
  if (n > per && bufs.some((b) => (b.offset ?? 0) % align !== 0)) {
    throw new Error(`adamw: chunked bindings need ${align}-byte aligned offsets`);
  }
  const pipe = gpu.pipeline("adamw", code, "adamw");
  for (let e0 = 0; e0 < n; e0 += per) {
    const count = Math.min(per, n - e0);
    const [gx, gy] = grid(Math.ceil(count / 256), gpu.limits.maxWorkgroups);
    gpu.dispatch(pipe, [
      new Uint32Array([
        count,
        gx * 256,
        f32bits(sc.decay),
        f32bits(1 - s.beta1),
        f32bits(s.beta2),
        f32bits(1 - s.beta2),
        f32bits(sc.stepSize),
        f32bits(sc.bc2sqrt),
        f32bits(s.eps),
      ]),
      ...bufs.map((b) => ({ buffer: b.buffer, offset: (b.offset ?? 0) + e0 * 4, size: count * 4 })),
    ], [gx, gy]);
  }
}

/** A trained tensor with its gradient and AdamW moments, all `size` f32 values. */
export interface AdamWParam {
  t: { all: BufferRange; size: number };
  grad: { all: BufferRange };
  m: { all: BufferRange };
  v: { all: BufferRange };
  /** Weight decay applies (linears, embeddings, codebooks; not norms). */
  decay: boolean;
}

/** One AdamW step on every parameter: weight decay `s.weightDecay` where `decay` is set. */
export function adamwAll(gpu: Gpu, params: AdamWParam[], s: AdamWStep): void {
  for (const p of params) {
    adamw(gpu, p.t.all, p.grad.all, p.m.all, p.v.all, p.t.size, {
      ...s,
      weightDecay: p.decay ? s.weightDecay : 0,
    });
  }
}
