// Backward of the causal (optionally sliding-window) softmax of shaders/attention.wgsl, in place
// on the gradient. Same transposed layout: key j in rows, query column c (global query
// i = q0 + c), so neighbouring lanes read neighbouring addresses. The forward computed
// p = softmax over visible keys of scale * s; for the upstream gradient dp, for each (h, c):
//   ds[j] = scale * p[j] * (dp[j] - sum_{lo <= j' <= hi} p[j'] dp[j'])   for lo <= j <= hi
//   ds[j] = 0                                                            otherwise
// with hi = min(i, T - 1), lo = max(0, i - window + 1) when window > 0 (else 0).
// One invocation per column: a dot pass over the visible keys and a write pass over all T keys,
// each unrolled by 4: at most 2 * ceil(T / 4) loop iterations (T up to 130,000).

struct Params {
  heads: u32,  // heads in this binding
  T: u32,      // keys: rows per head
  nq: u32,     // query columns per head
  q0: u32,     // global query index of column 0
  window: u32, // sliding window (keys i - window < j are kept); 0 = none
  scale: f32,
  stride: u32, // workgroups along x times 64 (id = x + y * stride)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> prob: array<f32>;     // [heads, T, nq] forward output
@group(0) @binding(2) var<storage, read_write> g: array<f32>;  // [heads, T, nq] dp in, ds out

// p[j] * dp[j] of key j, or 0 past hi.
fn pd(base: u32, j: u32, hi: u32) -> f32 {
  if (j <= hi) {
    let k = base + j * p.nq;
    return prob[k] * g[k];
  }
  return 0.0;
}

fn put(base: u32, j: u32, lo: u32, hi: u32, dot: f32) {
  if (j < p.T) {
    let k = base + j * p.nq;
    var v = 0.0;
    if (j >= lo && j <= hi) {
      v = p.scale * (prob[k] * (g[k] - dot));
    }
    g[k] = v;
  }
}

@compute @workgroup_size(64)
fn causal_softmax_backward(@builtin(global_invocation_id) gid: vec3<u32>) {
  let id = gid.x + gid.y * p.stride;
  if (id >= p.heads * p.nq) {
    return;
  }
  let h = id / p.nq;
  let c = id % p.nq;
  let i = p.q0 + c;
  let base = h * p.T * p.nq + c;
  let hi = min(i, p.T - 1u);
  var lo = 0u;
  if (p.window > 0u && i + 1u > p.window) {
    lo = i + 1u - p.window;
  }
  var n = 0u; // visible keys
  if (lo <= hi) {
    n = hi - lo + 1u;
  }
  let n4 = (n + 3u) / 4u;
  var a = vec4<f32>(0.0);
  for (var k = 0u; k < n4; k++) {
    let j = lo + 4u * k;
    a += vec4<f32>(pd(base, j, hi), pd(base, j + 1u, hi), pd(base, j + 2u, hi),
      pd(base, j + 3u, hi));
  }
  let dot = (a.x + a.y) + (a.z + a.w);

  let t4 = (p.T + 3u) / 4u;
  for (var k = 0u; k < t4; k++) {
    let j = 4u * k;
    put(base, j, lo, hi, dot);
    put(base, j + 1u, lo, hi, dot);
    put(base, j + 2u, lo, hi, dot);
    put(base, j + 3u, lo, hi, dot);
  }
}
