// Deterministic segment sums: the centroid gradient of ClusComp (and the embedding gradient).
//
// Items (vectors of a codebook layer, or token positions) are grouped by key (code, or token
// id) by a host-built index (src/kernels/codebook.ts). On the GPU each item is the offset e of
// its component 0 within the bound chunk of the source; component j sits at e + j * colStride
// (W^T [in, out]: colStride = 1; feature-major dx [H, T]: colStride = T). Bit 31 of e marks the
// last vector of a W^T row when out is not a multiple of d: only its first `tail` components
// exist. The goal: out[k, j] (+)= sum over the items of key k of their component j, in a fixed
// order, with no float atomics and no invocation looping more than Mesa's 65,535 times. The
// index cuts each key's items into pieces of at most P items (P <= 32,768), never straddling a
// bound chunk of the source:
//   segment_pieces: one invocation per (piece, j) sums its items in index order into
//                   partial[slot, j] (slot: the piece's rank among all pieces ordered by key);
//   segment_reduce: one invocation per (key, j) sums its pieces' partial rows in slot order.
// ix (u32): pieces as (start, end, slot) triples, start and end indexing the whole item list,
// followed at slotBase by slot offsets [keys + 1] (key k owns slots [so[k], so[k + 1])).

const PARTIAL: u32 = 0x80000000u;

struct Params {
  count: u32,     // pieces (segment_pieces) or keys (segment_reduce) in this dispatch
  first: u32,     // first piece or key of this dispatch
  d: u32,         // components per item
  posBase: u32,   // item index of the items binding's first element
  colStride: u32, // source elements between components
  tail: u32,      // components of a vector marked PARTIAL
  slotBase: u32,  // ix index of the slot offsets
  acc: u32,       // segment_reduce: 1 adds to out, 0 overwrites
  stride: u32,    // workgroups along x times 64 (id = x + y * stride)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ix: array<u32>;            // [pieces * 3 + keys + 1]
@group(0) @binding(2) var<storage, read_write> partial: array<f32>; // [slots, d]
// segment_pieces: the source chunk (only read); segment_reduce: out [count, d] for keys
// first .. first + count - 1.
@group(0) @binding(3) var<storage, read_write> data: array<f32>;
@group(0) @binding(4) var<storage, read> items: array<u32>;         // item offsets, from posBase

@compute @workgroup_size(64)
fn segment_pieces(@builtin(global_invocation_id) g: vec3<u32>) {
  let id = g.x + g.y * p.stride;
  if (id >= p.count * p.d) {
    return;
  }
  let pc = p.first + id / p.d;
  let j = id % p.d;
  let start = ix[3u * pc] - p.posBase;
  let end = ix[3u * pc + 1u] - p.posBase;
  let slot = ix[3u * pc + 2u];
  let off = j * p.colStride;
  let whole = j < p.tail; // component j exists in PARTIAL vectors too
  var s = 0.0;
  for (var q = start; q < end; q++) {
    let e = items[q];
    if (whole || (e & PARTIAL) == 0u) {
      s += data[(e & ~PARTIAL) + off];
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
  let k = p.first + id / p.d;
  let j = id % p.d;
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
