// ClusComp weight decode: W^T [in, out] from a codebook C [n, d] and fixed codes [in, cols],
// cols = ceil(out / d): row r of W^T is the concatenation of the centroids
// C[codes[r, 0]], C[codes[r, 1]], ... with the padding past column out dropped:
//   wT[r, c] = C[codes[r * cols + c / d], c % d]    for c < out
// One invocation per vector (r, v) copies its centroid's min(d, out - v * d) components: each
// invocation reads one code and one run of d floats (measured on llvmpipe: ~3x faster than one
// invocation per element, which gathers a scattered centroid float per lane). The grid is 2-D:
// x over the vectors of a row, y over rows r0 .. r0 + 65,534 of the binding (the host splits
// more rows over dispatches, and binds W^T and the codes in row chunks past the binding limit).

struct Params {
  out: u32,  // columns of W^T
  cols: u32, // codes per row: ceil(out / d)
  d: u32,    // centroid length
  r0: u32,   // binding row of grid row 0
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> cent: array<f32>;      // [n, d] centroids
@group(0) @binding(2) var<storage, read> codes: array<u32>;     // [rows, cols] codes < n
@group(0) @binding(3) var<storage, read_write> wT: array<f32>;  // [rows, out]

@compute @workgroup_size(64)
fn decode(@builtin(global_invocation_id) g: vec3<u32>) {
  let v = g.x;
  if (v >= p.cols) {
    return;
  }
  let r = p.r0 + g.y;
  let src = codes[r * p.cols + v] * p.d;
  let dst = r * p.out + v * p.d;
  let m = min(p.d, p.out - v * p.d);
  for (var j = 0u; j < m; j++) {
    wT[dst + j] = cent[src + j];
  }
}
