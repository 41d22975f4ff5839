// RMSNorm weight gradient over feature-major activations (see shaders/norm_backward.wgsl):
//   dw[h] (+)= sum_{t0 <= t < t0 + tn} dy[h, t] * x[h, t] * r[t]
// One workgroup of 64 lanes per feature h: lane l sums tokens t0 + l, t0 + l + 64, ... in order
// (coalesced across lanes; r[t] is shared by all features), then a fixed tree over the 64
// partial sums in shared memory. No atomics: the result is the same on every run. A lane runs
// ceil(tn / 64) iterations; the host splits T into chunks of at most 64 * 60,000 tokens, one
// dispatch each, the later ones accumulating.

const WG: u32 = 64u;

struct Params {
  H: u32,      // features
  T: u32,      // tokens (row length of x and dy)
  t0: u32,     // first token of this chunk
  tn: u32,     // tokens in this chunk
  stride: u32, // workgroups along x (h = x + y * stride)
  acc: u32,    // 1: dw += sum; 0: dw = sum
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;        // [H, T] feature-major
@group(0) @binding(2) var<storage, read> dy: array<f32>;       // [H, T] feature-major
@group(0) @binding(3) var<storage, read> rstd: array<f32>;     // [T] r[t] from the dx pass
@group(0) @binding(4) var<storage, read_write> dw: array<f32>; // [H]

var<workgroup> part: array<f32, WG>;

@compute @workgroup_size(WG)
fn rmsnorm_dw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
  let h = wid.x + wid.y * p.stride;
  if (h >= p.H) {
    return; // uniform across the workgroup
  }
  let base = h * p.T;
  var s = 0.0;
  for (var t = p.t0 + l; t < p.t0 + p.tn; t += WG) {
    s += dy[base + t] * x[base + t] * rstd[t];
  }
  part[l] = s;
  workgroupBarrier();
  for (var k = WG / 2u; k > 0u; k = k / 2u) {
    if (l < k) {
      part[l] = part[l] + part[l + k];
    }
    workgroupBarrier();
  }
  if (l == 0u) {
    var v = part[0];
    if (p.acc != 0u) {
      v += dw[h];
    }
    dw[h] = v;
  }
}
