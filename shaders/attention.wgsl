// Causal (optionally sliding-window) softmax over attention scores, in place. Scores arrive
// transposed, S^T[h, j, c]: key j in rows, query column c (global query index i = q0 + c), so
// that neighbouring lanes (neighbouring queries) read neighbouring addresses. For each (h, c):
//   p[j] = exp(scale * s[j] - m) / sum_{lo <= j' <= hi} exp(scale * s[j'] - m)  for lo <= j <= hi
//   p[j] = 0 otherwise
// with hi = min(i, T - 1), lo = max(0, i - window + 1) when window > 0 (else 0), and m the max
// of scale * s over [lo, hi] (HF eager attention: scores * scaling, then softmax in f32).
// One invocation per column runs three passes (max, sum, write), each unrolled by 4:
// at most 3 * ceil(T / 4) loop iterations, under Mesa's 65,535 limit for T up to 86,000.

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
@group(0) @binding(1) var<storage, read_write> s: array<f32>; // [heads, T, nq], in place

// -f32 max, written below it: Tint rejects -3.4028235e38 (its decimal value is past f32 max).
const LOWEST: f32 = -3.40282346e38;

// Scaled score of key j, or LOWEST past hi.
fn sv(base: u32, j: u32, hi: u32) -> f32 {
  if (j <= hi) {
    return p.scale * s[base + j * p.nq];
  }
  return LOWEST;
}

// exp(scaled score - m) of key j, or 0 past hi.
fn ev(base: u32, j: u32, hi: u32, m: f32) -> f32 {
  if (j <= hi) {
    return exp(p.scale * s[base + j * p.nq] - m);
  }
  return 0.0;
}

fn put(base: u32, j: u32, lo: u32, hi: u32, m: f32, sum: f32) {
  if (j < p.T) {
    let k = base + j * p.nq;
    var v = 0.0;
    if (j >= lo && j <= hi) {
      v = exp(p.scale * s[k] - m) / sum;
    }
    s[k] = v;
  }
}

@compute @workgroup_size(64)
fn causal_softmax(@builtin(global_invocation_id) g: vec3<u32>) {
  let id = g.x + g.y * p.stride;
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

  var mv = vec4<f32>(LOWEST);
  for (var k = 0u; k < n4; k++) {
    let j = lo + 4u * k;
    mv = max(mv, vec4<f32>(sv(base, j, hi), sv(base, j + 1u, hi), sv(base, j + 2u, hi),
      sv(base, j + 3u, hi)));
  }
  let m = max(max(mv.x, mv.y), max(mv.z, mv.w));

  var a = vec4<f32>(0.0);
  for (var k = 0u; k < n4; k++) {
    let j = lo + 4u * k;
    a += vec4<f32>(ev(base, j, hi, m), ev(base, j + 1u, hi, m), ev(base, j + 2u, hi, m),
      ev(base, j + 3u, hi, m));
  }
  let sum = (a.x + a.y) + (a.z + a.w);

  let t4 = (p.T + 3u) / 4u;
  for (var k = 0u; k < t4; k++) {
    let j = 4u * k;
    put(base, j, lo, hi, m, sum);
    put(base, j + 1u, lo, hi, m, sum);
    put(base, j + 2u, lo, hi, m, sum);
    put(base, j + 3u, lo, hi, m, sum);
  }
}
