// Elementwise kernels over flat f32 arrays. One invocation per element; the grid may be 2-D
// when there are more than 65,535 workgroups (id = x + y * 65535 * 256).

struct Params {
  n: u32,   // element count
  stride: u32, // workgroups along x times 256
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;  // [n], updated in place
@group(0) @binding(2) var<storage, read> y: array<f32>;        // [n]

// x += y (residual add)
@compute @workgroup_size(256)
fn add(@builtin(global_invocation_id) g: vec3<u32>) {
  let i = g.x + g.y * p.stride;
  if (i < p.n) {
    x[i] = x[i] + y[i];
  }
}

// x = silu(x) * y (SwiGLU: x is the gate projection, y the up projection)
@compute @workgroup_size(256)
fn silu_mul(@builtin(global_invocation_id) g: vec3<u32>) {
  let i = g.x + g.y * p.stride;
  if (i < p.n) {
    let a = x[i];
    x[i] = a / (1.0 + exp(-a)) * y[i];
  }
}
