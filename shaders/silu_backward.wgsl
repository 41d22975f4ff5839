// Backward of the SwiGLU gate product h = silu(g) * u (shaders/elementwise.wgsl silu_mul) over
// flat f32 arrays. With sg = sigmoid(g) and the upstream gradient dh:
//   dg = dh * u * sg * (1 + g * (1 - sg))
//   du = dh * g * sg                        (= dh * silu(g))
// silu_mul_backward writes dg and du to their own buffers; silu_mul_backward_inplace overwrites
// g with dg and u with du (the saved activations are not needed afterwards). One invocation per
// element; the grid may be 2-D (id = x + y * stride).

struct Params {
  n: u32,      // element count
  stride: u32, // workgroups along x times 256
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dh: array<f32>;       // [n] upstream gradient
@group(0) @binding(2) var<storage, read_write> g: array<f32>;  // [n] gate (dg when in place)
@group(0) @binding(3) var<storage, read_write> u: array<f32>;  // [n] up (du when in place)
@group(0) @binding(4) var<storage, read_write> dg: array<f32>; // [n] out (not in place)
@group(0) @binding(5) var<storage, read_write> du: array<f32>; // [n] out (not in place)

// (dg, du) of element i.
fn grads(i: u32) -> vec2<f32> {
  let a = g[i];
  let b = u[i];
  let d = dh[i];
  let sg = 1.0 / (1.0 + exp(-a));
  return vec2<f32>(d * b * (sg * (1.0 + a * (1.0 - sg))), d * (a * sg));
}

@compute @workgroup_size(256)
fn silu_mul_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.stride;
  if (i < p.n) {
    let r = grads(i);
    dg[i] = r.x;
    du[i] = r.y;
  }
}

@compute @workgroup_size(256)
fn silu_mul_backward_inplace(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.stride;
  if (i < p.n) {
    let r = grads(i);
    g[i] = r.x;
    u[i] = r.y;
  }
}
