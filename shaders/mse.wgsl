// Block-output MSE for finetuning: per-token sums of squared differences and the gradient.
// One invocation per token; the loop over features stays under Mesa's 65,535-iteration limit
// (H <= 65,000 is checked on the host).

struct Params {
  H: u32,      // features
  T: u32,      // tokens
  scale: u32,  // f32 bits: dy = scale * (y - want)
  accumulate: u32, // 1: dy += ..., 0: dy = ...
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> y: array<f32>;       // [H, T] feature-major
@group(0) @binding(2) var<storage, read> want: array<f32>;    // [H, T]
@group(0) @binding(3) var<storage, read_write> dy: array<f32>; // [H, T]
@group(0) @binding(4) var<storage, read_write> sq: array<f32>; // [T] sum_h (y - want)^2

@compute @workgroup_size(64)
fn mse(@builtin(global_invocation_id) g: vec3<u32>) {
  let t = g.x;
  if (t >= p.T) {
    return;
  }
  let scale = bitcast<f32>(p.scale);
  var s = 0.0;
  for (var h = 0u; h < p.H; h++) {
    let i = h * p.T + t;
    let e = y[i] - want[i];
    s += e * e;
    if (p.accumulate == 1u) {
      dy[i] += scale * e;
    } else {
      dy[i] = scale * e;
    }
  }
  sq[t] = s;
}
