// RMSNorm over feature-major activations, as HF LlamaRMSNorm in f32:
//   out[h, t] = (x[h, t] * (1 / sqrt(mean_h(x[:, t]^2) + eps))) * w[h]
// One invocation per token t walks its column; neighbouring lanes read neighbouring tokens, so
// every load and store is coalesced and w[h] is the same address for the whole workgroup.

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

// One plain loop per pass: on llvmpipe, loops with several loads per iteration or per-element
// bounds branches ran 20-35x slower than this. (A compensated sum is folded away by the
// compiler.) An invocation runs 2 * H iterations: under Mesa's 65,535-iteration limit for
// H <= 32,000 (the wrapper checks).
@compute @workgroup_size(64)
fn rmsnorm(@builtin(global_invocation_id) g: vec3<u32>) {
  let t = g.x + g.y * p.stride;
  if (t >= p.T) {
    return;
  }
  var s = 0.0;
  for (var h = 0u; h < p.H; h++) {
    let v = x[h * p.T + t];
    s += v * v;
  }
  let r = 1.0 / sqrt(s / f32(p.H) + p.eps);
  for (var h = 0u; h < p.H; h++) {
    let i = h * p.T + t;
    out[i] = (x[i] * r) * w[h];
  }
}
