// ClusComp weight decode: W^T [in, out] from a codebook C [n, d] and fixed codes [in, cols],
// cols = ceil(out / d): row r of W^T is the concatenation of the centroids
// C[codes[r, 0]], C[codes[r, 1]], ... with the padding past column out dropped:
//   wT[r, c] = C[codes[r * cols + c / d], c % d]    for c < out
// One invocation per output element (id = r * out + c): stores are coalesced and the d lanes of
// one vector read the same code. The host binds W^T and the codes in row chunks past the binding
// limit (row0 is implicit: both bindings start at the chunk's first row).

struct Params {
  rows: u32,   // rows of W^T in this binding
  out: u32,    // columns of W^T
  cols: u32,   // codes per row: ceil(out / d)
  d: u32,      // centroid length
  stride: u32, // workgroups along x times 256 (id = x + y * stride)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> cent: array<f32>;      // [n, d] centroids
@group(0) @binding(2) var<storage, read> codes: array<u32>;     // [rows, cols] codes < n
@group(0) @binding(3) var<storage, read_write> wT: array<f32>;  // [rows, out]

@compute @workgroup_size(256)
fn decode(@builtin(global_invocation_id) g: vec3<u32>) {
  let id = g.x + g.y * p.stride;
  if (id >= p.rows * p.out) {
    return;
  }
  let r = id / p.out;
  let c = id - r * p.out;
  let v = c / p.d;
  let code = codes[r * p.cols + v];
  wT[id] = cent[code * p.d + (c - v * p.d)];
}
