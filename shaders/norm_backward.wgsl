// RMSNorm backward over feature-major activations (forward: shaders/norm.wgsl):
//   y[h, t] = x[h, t] * r[t] * w[h],   r[t] = 1 / sqrt(mean_h(x[:, t]^2) + eps)
// For an upstream gradient dy [H, T], with w held fixed:
//   dx[h, t] = r w[h] dy[h, t] - x[h, t] * r^3 / H * sum_h' w[h'] dy[h', t] x[h', t]
// One invocation per token t walks its column twice (sums, then writes), each loop unrolled by 4:
// 2 * ceil(H / 4) iterations per invocation, under Mesa's 65,535 limit for H up to 130,000.
// Neighbouring lanes are neighbouring tokens: every load and store is coalesced and w[h] is the
// same address for the whole workgroup. rmsnorm_backward_rstd also stores r[t] for the weight
// gradient (shaders/norm_dw.wgsl).

struct Params {
  H: u32,      // features
  T: u32,      // tokens
  eps: f32,
  stride: u32, // workgroups along x times 64 (token index = x + y * stride)
  acc: u32,    // 1: dx += gradient; 0: dx = gradient
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [H, T] feature-major
@group(0) @binding(2) var<storage, read> w: array<f32>;          // [H]
@group(0) @binding(3) var<storage, read> dy: array<f32>;         // [H, T] feature-major
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;   // [H, T] feature-major
@group(0) @binding(5) var<storage, read_write> rstd: array<f32>; // [T] (rstd entry only)

// (x^2, w dy x) of feature h, or zeros past H.
fn terms(h: u32, t: u32) -> vec2<f32> {
  if (h < p.H) {
    let i = h * p.T + t;
    let v = x[i];
    return vec2<f32>(v * v, w[h] * dy[i] * v);
  }
  return vec2<f32>(0.0);
}

fn put(h: u32, t: u32, r: f32, c: f32) {
  if (h < p.H) {
    let i = h * p.T + t;
    var g = r * w[h] * dy[i] - x[i] * c;
    if (p.acc != 0u) {
      g += dx[i];
    }
    dx[i] = g;
  }
}

// Writes dx for token t and returns r[t].
fn column(t: u32) -> f32 {
  let n4 = (p.H + 3u) / 4u;
  var ss = vec4<f32>(0.0);
  var dot = vec4<f32>(0.0);
  for (var k = 0u; k < n4; k++) {
    let h = 4u * k;
    let a = terms(h, t);
    let b = terms(h + 1u, t);
    let c = terms(h + 2u, t);
    let d = terms(h + 3u, t);
    ss += vec4<f32>(a.x, b.x, c.x, d.x);
    dot += vec4<f32>(a.y, b.y, c.y, d.y);
  }
  let ms = ((ss.x + ss.y) + (ss.z + ss.w)) / f32(p.H);
  let r = 1.0 / sqrt(ms + p.eps);
  let c = ((dot.x + dot.y) + (dot.z + dot.w)) / f32(p.H) * (r * r * r);
  for (var k = 0u; k < n4; k++) {
    let h = 4u * k;
    put(h, t, r, c);
    put(h + 1u, t, r, c);
    put(h + 2u, t, r, c);
    put(h + 3u, t, r, c);
  }
  return r;
}

@compute @workgroup_size(64)
fn rmsnorm_backward(@builtin(global_invocation_id) g: vec3<u32>) {
  let t = g.x + g.y * p.stride;
  if (t < p.T) {
    column(t);
  }
}

@compute @workgroup_size(64)
fn rmsnorm_backward_rstd(@builtin(global_invocation_id) g: vec3<u32>) {
  let t = g.x + g.y * p.stride;
  if (t < p.T) {
    rstd[t] = column(t);
  }
}
