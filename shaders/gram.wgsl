// Calibration statistics of a layer's inputs, accumulated over token chunks:
//   diag: acc[i] += sum_t x[i, t]^2
//   gram: acc[(i - r0) * F + j] += sum_t x[i, t] * x[j, t]   for rows i in [r0, r0 + rows)
// x is feature-major [F, ld]; token t of a call is column col0 + t (t < T). One invocation per
// output value walks the T tokens: the wrapper keeps T <= 16,384, under Mesa's 65,535-iteration
// loop limit. The sums are f32, added in token order.

struct Params {
  F: u32,      // features (rows of x, and the gram's width)
  T: u32,      // tokens in this call
  ld: u32,     // x's row stride in floats
  col0: u32,   // first token column
  r0: u32,     // gram: first row held by acc
  rows: u32,   // gram: rows held by acc
  stride: u32, // workgroups along x times 64 (index = x + y * stride)
  _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [F, ld] feature-major
@group(0) @binding(2) var<storage, read_write> acc: array<f32>;  // diag: [F]; gram: [rows, F]

@compute @workgroup_size(64)
fn diag(@builtin(global_invocation_id) g: vec3<u32>) {
  let i = g.x + g.y * p.stride;
  if (i >= p.F) {
    return;
  }
  let base = i * p.ld + p.col0;
  var s = 0.0;
  for (var t = 0u; t < p.T; t++) {
    let v = x[base + t];
    s += v * v;
  }
  acc[i] += s;
}

@compute @workgroup_size(64)
fn gram(@builtin(global_invocation_id) g: vec3<u32>) {
  let k = g.x + g.y * p.stride;
  if (k >= p.rows * p.F) {
    return;
  }
  let ri = k / p.F;
  let j = k - ri * p.F;
  let a = (p.r0 + ri) * p.ld + p.col0;
  let b = j * p.ld + p.col0;
  var s = 0.0;
  for (var t = 0u; t < p.T; t++) {
    s += x[a + t] * x[b + t];
  }
  acc[k] += s;
}
