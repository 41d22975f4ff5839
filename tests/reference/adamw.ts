// Plain TypeScript reference for shaders/adamw.wgsl: torch.optim.AdamW's single-tensor step,
// op by op in float32 (Math.fround after every operation, scalars rounded as PyTorch casts
// Python floats to the tensor's dtype).

export interface AdamWRefStep {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  step: number;
}

/** One step in place on param, m and v (Float32Array state, as PyTorch's f32 tensors). */
export function adamwRef(
  param: Float32Array,
  grad: Float32Array,
  m: Float32Array,
  v: Float32Array,
  s: AdamWRefStep,
): void {
  const f = Math.fround;
  const decay = f(1 - s.lr * s.weightDecay); // param.mul_(1 - lr * weight_decay)
  const w1 = f(1 - s.beta1); // exp_avg.lerp_(grad, 1 - beta1)
  const b2 = f(s.beta2), w2 = f(1 - s.beta2);
  const stepSize = s.lr / (1 - s.beta1 ** s.step); // Python floats
  const bc2sqrt = f(Math.sqrt(1 - s.beta2 ** s.step));
  const eps = f(s.eps);
  for (let i = 0; i < param.length; i++) {
    const g = grad[i];
    param[i] = f(param[i] * decay);
    m[i] = f(m[i] + f(w1 * f(g - m[i]))); // lerp with weight < 0.5
    v[i] = f(f(v[i] * b2) + f(w2 * f(g * g)));
    const denom = f(f(f(Math.sqrt(v[i])) / bc2sqrt) + eps);
    param[i] = f(param[i] + f(f(-stepSize) * f(m[i] / denom)));
  }
}
