// Softmax cross-entropy against soft targets (distillation), over token-major logits, in place:
//   q = (1 - w) * onehot(target) + w * p_teacher / S   (S = sum of the row's k teacher probs;
//       q = onehot(target) when S <= 0, i.e. no teacher row)
//   loss[t0 + r] = -sum_j q_j log softmax(z)_j = logsumexp(z) - sum_j q_j z_j
//   logits[r, :] <- scale * (softmax(z) - q)
// A target of 0xFFFFFFFF ("no target", a masked position) writes a zero row and a zero loss;
// any other target >= V (or a teacher id >= V) writes NaNs.
// One workgroup of 256 invocations per row: lane l keeps an online (max, sum) over columns
// l, l + 256, ..., the workgroup merges the 256 pairs in a fixed tree, lane 0 reads the target
// and teacher logits (k iterations), every lane writes its columns, then lane 0 subtracts the
// teacher terms (k iterations): 2 * ceil(V / 256) + 2 * k + 8 loop iterations per invocation,
// kept under Mesa's 65,535 by the host (V <= 256 * 32,000, k <= 1,000).

const WG: u32 = 256u;
const LOWEST: f32 = -3.40282346e38; // f32 max; Tint rejects the longer -3.4028235e38
const NO_TARGET: u32 = 0xFFFFFFFFu;

struct Params {
  T: u32,      // rows in this binding
  V: u32,      // vocabulary
  k: u32,      // teacher entries per row (0: no teacher)
  t0: u32,     // index into targets, tids, tprobs (in rows) and loss of this binding's row 0
  stride: u32, // workgroups along x (row = x + y * stride)
  scale: f32,  // gradient scale, usually 1 / counted rows
  w: f32,      // distillation weight
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> targets: array<u32>;      // [t0 + T]
@group(0) @binding(2) var<storage, read> tids: array<u32>;         // [(t0 + T) * k] (>= 1 entry)
@group(0) @binding(3) var<storage, read> tprobs: array<f32>;       // [(t0 + T) * k] (>= 1 entry)
@group(0) @binding(4) var<storage, read_write> logits: array<f32>; // [T, V] -> dlogits
@group(0) @binding(5) var<storage, read_write> loss: array<f32>;   // [t0 + T]

var<workgroup> wm: array<f32, WG>;
var<workgroup> ws: array<f32, WG>;
var<workgroup> qw: f32; // effective teacher weight of this row (0 without a teacher)
var<workgroup> bad: u32;

@compute @workgroup_size(WG)
fn soft_xent(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) l: u32) {
  let r = wid.x + wid.y * p.stride;
  if (r >= p.T) {
    return; // uniform across the workgroup
  }
  let base = r * p.V;
  let tgt = targets[p.t0 + r];
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
  for (var s = WG / 2u; s > 0u; s = s / 2u) {
    if (l < s) {
      let m1 = wm[l];
      let m2 = wm[l + s];
      let mm = max(m1, m2);
      ws[l] = ws[l] * exp(m1 - mm) + ws[l + s] * exp(m2 - mm);
      wm[l] = mm;
    }
    workgroupBarrier();
  }
  let mx = wm[0];
  let inv = 1.0 / ws[0];
  let nan = bitcast<f32>(0x7fc00000u);
  let tb = (p.t0 + r) * p.k;
  if (l == 0u) {
    var res = 0.0;
    var w = 0.0;
    var isBad = 0u;
    if (tgt != NO_TARGET) {
      var st = 0.0;
      for (var i = 0u; i < p.k; i++) {
        st += tprobs[tb + i];
      }
      if (st > 0.0) {
        w = p.w;
      }
      // loss = logsumexp - sum_j q_j z_j, relative to the max (sum_j q_j = 1).
      var qz = 0.0;
      if (tgt < p.V) {
        qz = (1.0 - w) * (logits[base + tgt] - mx);
      } else {
        isBad = 1u;
      }
      if (w != 0.0) {
        for (var i = 0u; i < p.k; i++) {
          let id = tids[tb + i];
          if (id < p.V) {
            qz += w * (tprobs[tb + i] / st) * (logits[base + id] - mx);
          } else {
            isBad = 1u;
          }
        }
        w = w / st; // the factor of each teacher prob in q
      }
      res = log(ws[0]) - qz;
      if (isBad != 0u) {
        res = nan;
      }
    }
    loss[p.t0 + r] = res;
    qw = w;
    bad = isBad;
  }
  workgroupBarrier();
  let wt = qw;
  let isBad = bad;
  for (var j = l; j < p.V; j += WG) {
    var g = 0.0;
    if (tgt != NO_TARGET) {
      if (isBad != 0u) {
        g = nan;
      } else {
        g = exp(logits[base + j] - mx) * inv;
        if (j == tgt) {
          g -= 1.0 - p.w * select(0.0, 1.0, wt != 0.0);
        }
        g = p.scale * g;
      }
    }
    logits[base + j] = g;
  }
  storageBarrier();
  workgroupBarrier();
  if (l == 0u && tgt != NO_TARGET && isBad == 0u && wt != 0.0) {
    for (var i = 0u; i < p.k; i++) {
      let id = tids[tb + i];
      logits[base + id] -= p.scale * wt * tprobs[tb + i];
    }
  }
}
