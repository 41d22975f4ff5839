// ClusComp weight decode from the code index alone (no codes buffer): W^T [in, out] from a
// codebook C [n, d] and the host-built index of the codes (src/kernels/codebook.ts, CodeIndex
// with layout "rows"), writing exactly what shaders/codebook.wgsl's decode writes:
//   wT[r, c] = C[code(r, c / d), c % d]    for c < out
// The index lists every vector v = r * cols + cv of the codes once, grouped by code (key) and cut
// into pieces of at most P <= 32,768 vectors of one key, never straddling a bound row chunk of
// W^T. Each item is the offset e of its vector's component 0 within the bound chunk; bit 31 of e
// marks the last vector of a row when out is not a multiple of d (only its first `tail`
// components exist, the padding past column out is never written). Every element of W^T is
// written by exactly one invocation: no conflicts, no atomics.
//
// One invocation per (piece, j) finds the piece's key k by a binary search of the slot offsets
// (the piece's slot lies in key k's slots [so[k], so[k + 1])), then writes C[k, j] at component
// j of each of its items: at most P iterations (plus <= 32 for the search), under Mesa's 65,535.
// ix (u32): pieces as (start, end, slot) triples, start and end indexing the whole item list,
// followed at slotBase by slot offsets [keys + 1].

const PARTIAL: u32 = 0x80000000u;

struct Params {
  count: u32,    // pieces in this dispatch
  first: u32,    // first piece of this dispatch
  d: u32,        // centroid length (components per item)
  posBase: u32,  // item index of the items binding's first element
  tail: u32,     // components of a vector marked PARTIAL
  slotBase: u32, // ix index of the slot offsets
  keys: u32,     // codebook entries n (slot offsets hold keys + 1 values)
  stride: u32,   // workgroups along x times 64 (id = x + y * stride)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ix: array<u32>;        // [pieces * 3 + keys + 1]
@group(0) @binding(2) var<storage, read> cent: array<f32>;      // [keys, d] centroids
@group(0) @binding(3) var<storage, read_write> wT: array<f32>;  // bound row chunk [rows, out]
@group(0) @binding(4) var<storage, read> items: array<u32>;     // item offsets, from posBase

@compute @workgroup_size(64)
fn decode_pieces(@builtin(global_invocation_id) g: vec3<u32>) {
  let id = g.x + g.y * p.stride;
  if (id >= p.count * p.d) {
    return;
  }
  let pc = p.first + id / p.d;
  let j = id % p.d;
  let start = ix[3u * pc] - p.posBase;
  let end = ix[3u * pc + 1u] - p.posBase;
  let slot = ix[3u * pc + 2u];
  // The key: the largest k with so[k] <= slot (so[0] = 0 <= slot < so[keys]).
  var lo = 0u;
  var hi = p.keys;
  while (hi - lo > 1u) {
    let mid = lo + (hi - lo) / 2u;
    if (ix[p.slotBase + mid] <= slot) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  let c = cent[lo * p.d + j];
  let whole = j < p.tail; // component j exists in PARTIAL vectors too
  for (var q = start; q < end; q++) {
    let e = items[q];
    if (whole || (e & PARTIAL) == 0u) {
      wT[(e & ~PARTIAL) + j] = c;
    }
  }
}
