// Fused log-softmax + negative log-likelihood over token-major logits:
//   out[t0 + r] = logsumexp(logits[r, :]) - logits[r, targets[t0 + r]]
// computed as log(sum_j exp(logits[r, j] - m)) - (logits[r, target] - m), m the row max.
// One workgroup of 256 invocations per row: lane l keeps an online (max, sum) over columns
// l, l + 256, ... (ceil(V / 256) iterations, coalesced across lanes), then the workgroup merges
// the 256 pairs in shared memory. A target of 0xFFFFFFFF means "no target" and writes 0; any
// other target >= V writes NaN. Rows beyond 65,535 use a 2-D grid (row = x + y * stride).

const WG: u32 = 256u;
const LOWEST: f32 = -3.40282346e38; // f32 max; Tint rejects the longer -3.4028235e38
const NO_TARGET: u32 = 0xFFFFFFFFu;

struct Params {
  T: u32,      // rows in this binding
  V: u32,      // vocabulary
  t0: u32,     // index into targets and out of this binding's row 0
  stride: u32, // workgroups along x (row = x + y * stride)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;    // [T, V] token-major
@group(0) @binding(2) var<storage, read> targets: array<u32>;   // [t0 + T]
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // [t0 + T]

var<workgroup> wm: array<f32, WG>;
var<workgroup> ws: array<f32, WG>;

@compute @workgroup_size(WG)
fn nll(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
  let r = wid.x + wid.y * p.stride;
  if (r >= p.T) {
    return;
  }
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
  if (l == 0u) {
    let tgt = targets[p.t0 + r];
    var res = 0.0;
    if (tgt != NO_TARGET) {
      if (tgt < p.V) {
        res = log(ws[0]) - (logits[base + tgt] - wm[0]);
      } else {
        res = bitcast<f32>(0x7fc00000u);
      }
    }
    out[p.t0 + r] = res;
  }
}
