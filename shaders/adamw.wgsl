// One AdamW step with PyTorch's semantics (torch.optim.AdamW, single-tensor path), per element:
//   p = p * (1 - lr * weight_decay)                     (decoupled weight decay first)
//   m = m + (1 - beta1) * (g - m)                       (exp_avg.lerp_(g, 1 - beta1))
//   v = v * beta2 + (1 - beta2) * g * g
//   p = p - stepSize * m / (sqrt(v) / bc2sqrt + eps)
// with stepSize = lr / (1 - beta1^step) and bc2sqrt = sqrt(1 - beta2^step) computed by the host
// in float64 (as PyTorch computes them in Python floats). One invocation per element; the grid
// may be 2-D (id = x + y * stride).

struct Params {
  n: u32,         // elements in this binding
  stride: u32,    // workgroups along x times 256
  decay: f32,     // 1 - lr * weight_decay
  oneMinusB1: f32, // 1 - beta1
  beta2: f32,
  oneMinusB2: f32, // 1 - beta2
  stepSize: f32,  // lr / (1 - beta1^step)
  bc2sqrt: f32,   // sqrt(1 - beta2^step)
  eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>; // [n]
@group(0) @binding(2) var<storage, read> grad: array<f32>;        // [n]
@group(0) @binding(3) var<storage, read_write> m: array<f32>;     // [n] first moment
@group(0) @binding(4) var<storage, read_write> v: array<f32>;     // [n] second moment

@compute @workgroup_size(256)
fn adamw(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.stride;
  if (i >= p.n) {
    return;
  }
  let g = grad[i];
  let w = param[i] * p.decay;
  let mi = m[i];
  let m1 = mi + p.oneMinusB1 * (g - mi);
  let v1 = v[i] * p.beta2 + p.oneMinusB2 * (g * g);
  let denom = sqrt(v1) / p.bc2sqrt + p.eps;
  m[i] = m1;
  v[i] = v1;
  param[i] = w - p.stepSize * (m1 / denom);
}
