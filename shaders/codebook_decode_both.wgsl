// ClusComp weight decode into both layouts at once: W^T [in, out] (what the forward reads) and
// W [out, in] (what the backward contracts over), from a codebook C [n, d] and fixed codes
// [in, cols], cols = ceil(out / d):
//   wT[r, c] = w[c, r] = C[codes[r * cols + c / d], c % d]    for c < out
// One invocation per vector (r, v) copies its centroid's min(d, out - v * d) components to both.
// Neighbouring lanes take neighbouring rows r, so the W writes (stride 1 in r) are runs of
// consecutive addresses; the W^T writes are runs of d. Replaces decode + transpose (two
// dispatches and a pass over W^T). The grid is 2-D: x over rows (64 per workgroup), y over the
// vectors of a row (cols <= 65,535); every buffer fits one binding (the host checks).

struct Params {
  inDim: u32, // rows of W^T
  out: u32,   // columns of W^T
  cols: u32,  // codes per row: ceil(out / d)
  d: u32,     // centroid length
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> cent: array<f32>;      // [n, d] centroids
@group(0) @binding(2) var<storage, read> codes: array<u32>;     // [inDim, cols] codes < n
@group(0) @binding(3) var<storage, read_write> wT: array<f32>;  // [inDim, out]
@group(0) @binding(4) var<storage, read_write> w: array<f32>;   // [out, inDim]

@compute @workgroup_size(64)
fn decode_both(@builtin(global_invocation_id) g: vec3<u32>) {
  let r = g.x;
  let v = g.y;
  if (r >= p.inDim || v >= p.cols) {
    return;
  }
  let src = codes[r * p.cols + v] * p.d;
  let c0 = v * p.d;
  let m = min(p.d, p.out - c0);
  for (var j = 0u; j < m; j++) {
    let x = cent[src + j];
    wT[r * p.out + c0 + j] = x;
    w[(c0 + j) * p.inDim + r] = x;
  }
}
