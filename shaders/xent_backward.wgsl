// Backward of softmax cross-entropy over token-major logits (forward: shaders/loss.wgsl nll):
//   dlogits[r, j] = scale * (softmax(logits[r, :])[j] - (j == targets[t0 + r]))
// where scale is usually 1 / (number of counted targets). A target of 0xFFFFFFFF ("no target")
// writes a zero row; any other target >= V writes a NaN row.
// One workgroup of 256 invocations per row: lane l keeps an online (max, sum) over columns
// l, l + 256, ... (coalesced across lanes), the workgroup merges the 256 pairs in shared memory
// in a fixed tree, then every lane writes its columns: 2 * ceil(V / 256) + 8 loop iterations,
// under Mesa's 65,535 limit for V up to 8,000,000. xent_backward_inplace overwrites the logits
// with their gradient (a [T, V] buffer saved); xent_backward writes to dlogits.

const WG: u32 = 256u;
const LOWEST: f32 = -3.40282346e38; // f32 max; Tint rejects the longer -3.4028235e38
const NO_TARGET: u32 = 0xFFFFFFFFu;

struct Params {
  T: u32,      // rows in this binding
  V: u32,      // vocabulary
  t0: u32,     // index into targets of this binding's row 0
  stride: u32, // workgroups along x (row = x + y * stride)
  scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> targets: array<u32>;      // [t0 + T]
@group(0) @binding(2) var<storage, read_write> logits: array<f32>; // [T, V] (gradient in place)
@group(0) @binding(3) var<storage, read_write> dlogits: array<f32>; // [T, V] (not in place)

var<workgroup> wm: array<f32, WG>;
var<workgroup> ws: array<f32, WG>;

// Row r's max and 1 / sum(exp(logit - max)), the same for every lane.
fn stats(r: u32, l: u32) -> vec2<f32> {
  let base = r * p.V;
  var m = LOWEST;
  var sum = 0.0;
  for (var j = l; j < p.V; j += WG) {
    let v = logits[base + j];
    if (v > m) {
      sum = sum * exp(m - v) + 1.0;
      m = v;
    } else {
      sum += exp(v - m);
    }
  }
  wm[l] = m;
  ws[l] = sum;
  workgroupBarrier();
  for (var k = WG / 2u; k > 0u; k = k / 2u) {
    if (l < k) {
      let m1 = wm[l];
      let m2 = wm[l + k];
      let mm = max(m1, m2);
      ws[l] = ws[l] * exp(m1 - mm) + ws[l + k] * exp(m2 - mm);
      wm[l] = mm;
    }
    workgroupBarrier();
  }
  return vec2<f32>(wm[0], 1.0 / ws[0]);
}

// The gradient of logit j in a row with statistics st and target tgt.
fn grad(v: f32, j: u32, st: vec2<f32>, tgt: u32) -> f32 {
  if (tgt == NO_TARGET) {
    return 0.0;
  }
  if (tgt >= p.V) {
    return bitcast<f32>(0x7fc00000u);
  }
  var q = exp(v - st.x) * st.y;
  if (j == tgt) {
    q -= 1.0;
  }
  return p.scale * q;
}

@compute @workgroup_size(WG)
fn xent_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
  let r = wid.x + wid.y * p.stride;
  if (r >= p.T) {
    return; // uniform across the workgroup
  }
  let st = stats(r, l);
  let tgt = targets[p.t0 + r];
  let base = r * p.V;
  for (var j = l; j < p.V; j += WG) {
    dlogits[base + j] = grad(logits[base + j], j, st, tgt);
  }
}

@compute @workgroup_size(WG)
fn xent_backward_inplace(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(local_invocation_index) l: u32,
) {
  let r = wid.x + wid.y * p.stride;
  if (r >= p.T) {
    return;
  }
  let st = stats(r, l);
  let tgt = targets[p.t0 + r];
  let base = r * p.V;
  for (var j = l; j < p.V; j += WG) {
    logits[base + j] = grad(logits[base + j], j, st, tgt);
  }
}
