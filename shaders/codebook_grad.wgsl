// Deterministic segment sums: the centroid gradient of ClusComp (and the embedding gradient).
//
// Items (vectors of a codebook layer, or token positions) are grouped by key (code, or token
// id) in a host-built index (src/kernels/codebook.ts buildCodeIndex). Item v is a vector of d
// components; component j of item v = r * cols + cv lives at
//   data[(r - row0) * rowStride + (cv * d + j) * colStride]     (valid while cv * d + j < out)
// (W^T [in, out]: rowStride = out, colStride = 1; feature-major dx [H, T] with cols = 1, d = H:
// rowStride = 1, colStride = T). The goal: out[k, j] (+)= sum over the items v of key k of
// component j of v, in a fixed order, with no float atomics and no invocation looping more
// than Mesa's 65,535 times. The index cuts each key's items into pieces of at most P items
// (P <= 32,768), never straddling a bound row chunk of data:
//   segment_pieces: one invocation per (piece, j) sums its items in index order into
//                   partial[slot, j] (slot: the piece's rank among all pieces ordered by key);
//   segment_reduce: one invocation per (key, j) sums its pieces' partial rows in slot order.
// ix (u32): pieces as (start, end, slot) triples, start and end indexing the whole positions
// list, followed at slotBase by slot offsets [keys + 1] (key k owns slots [so[k], so[k + 1])).

struct Params {
  count: u32,     // pieces (segment_pieces) or keys (segment_reduce) in this dispatch
  first: u32,     // first piece or key of this dispatch
  d: u32,         // components per item
  cols: u32,      // items per data row
  row0: u32,      // data row of the binding's first row
  posBase: u32,   // positions index of the positions binding's first element
  rowStride: u32, // data elements between rows
  colStride: u32, // data elements between columns
  out: u32,       // valid columns per data row
  slotBase: u32,  // ix index of the slot offsets
  acc: u32,       // segment_reduce: 1 adds to out, 0 overwrites
  stride: u32,    // workgroups along x times 64 (id = x + y * stride)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ix: array<u32>;          // [pieces * 3 + keys + 1]
@group(0) @binding(2) var<storage, read_write> partial: array<f32>; // [slots, d]
// segment_pieces: the source (read only) bound from row0; segment_reduce: the output
// out [count, d] for keys first .. first + count - 1.
@group(0) @binding(3) var<storage, read_write> data: array<f32>;
@group(0) @binding(4) var<storage, read> positions: array<u32>;     // items, from posBase

@compute @workgroup_size(64)
fn segment_pieces(@builtin(global_invocation_id) g: vec3<u32>) {
  let id = g.x + g.y * p.stride;
  if (id >= p.count * p.d) {
    return;
  }
  let pc = p.first + id / p.d;
  let j = id % p.d;
  let start = ix[3u * pc];
  let end = ix[3u * pc + 1u];
  let slot = ix[3u * pc + 2u];
  var s = 0.0;
  for (var q = start; q < end; q++) {
    let v = positions[q - p.posBase];
    let r = v / p.cols;
    let col = (v - r * p.cols) * p.d + j;
    if (col < p.out) {
      s += data[(r - p.row0) * p.rowStride + col * p.colStride];
    }
  }
  partial[slot * p.d + j] = s;
}

@compute @workgroup_size(64)
fn segment_reduce(@builtin(global_invocation_id) g: vec3<u32>) {
  let id = g.x + g.y * p.stride;
  if (id >= p.count * p.d) {
    return;
  }
  let kl = id / p.d;
  let j = id % p.d;
  let k = p.first + kl;
  let s0 = ix[p.slotBase + k];
  let s1 = ix[p.slotBase + k + 1u];
  var s = 0.0;
  for (var q = s0; q < s1; q++) {
    s += partial[q * p.d + j];
  }
  if (p.acc != 0u) {
    s += data[id];
  }
  data[id] = s;
}
