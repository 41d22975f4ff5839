// RMSNorm over feature-major activations, as HF LlamaRMSNorm in f32:
//   out[h, t] = (x[h, t] * (1 / sqrt(mean_h(x[:, t]^2) + eps))) * w[h]
// One invocation per token t walks its column; neighbouring lanes read neighbouring tokens, so
// every load and store is coalesced and w[h] is the same address for the whole workgroup. Both
// loops are unrolled by 4, so an invocation runs 2 * ceil(H / 4) iterations: under Mesa's
// 65,535-iteration limit for H up to 130,000 (the wrapper checks).

struct Params {
  H: u32,      // features
  T: u32,      // tokens
  eps: f32,
  stride: u32, // workgroups along x times 64 (token index = x + y * stride)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [H, T] feature-major
@group(0) @binding(2) var<storage, read> w: array<f32>;          // [H]
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // [H, T] feature-major

fn sq(h: u32, t: u32) -> f32 {
  if (h < p.H) {
    let v = x[h * p.T + t];
    return v * v;
  }
  return 0.0;
}

fn put(h: u32, t: u32, r: f32) {
  if (h < p.H) {
    let i = h * p.T + t;
    out[i] = (x[i] * r) * w[h];
  }
}

@compute @workgroup_size(64)
fn rmsnorm(@builtin(global_invocation_id) g: vec3<u32>) {
  let t = g.x + g.y * p.stride;
  if (t >= p.T) {
    return;
  }
  let n4 = (p.H + 3u) / 4u;
  var a = vec4<f32>(0.0);
  for (var k = 0u; k < n4; k++) {
    let h = 4u * k;
    a += vec4<f32>(sq(h, t), sq(h + 1u, t), sq(h + 2u, t), sq(h + 3u, t));
  }
  let ms = ((a.x + a.y) + (a.z + a.w)) / f32(p.H);
  let r = 1.0 / sqrt(ms + p.eps);
  for (var k = 0u; k < n4; k++) {
    let h = 4u * k;
    put(h, t, r);
    put(h + 1u, t, r);
    put(h + 2u, t, r);
    put(h + 3u, t, r);
  }
}
