// Batched transpose of row-major matrices: dst[b, c, r] = src[b, r, c] for src [batch, R, C]
// and dst [batch, C, R]. One invocation per 4 x 4 tile: it reads 4 rows of 4 neighbouring
// columns and writes 4 rows of 4 neighbouring elements of dst, so both sides touch runs of 4
// consecutive addresses; neighbouring lanes take neighbouring tiles along C. The grid is 2-D
// (tile id = x + y * stride) past 65,535 workgroups.

struct Params {
  R: u32,      // rows of src
  C: u32,      // columns of src
  batch: u32,  // matrices
  stride: u32, // workgroups along x times 64
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;        // [batch, R, C]
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;  // [batch, C, R]

@compute @workgroup_size(64)
fn transpose(@builtin(global_invocation_id) g: vec3<u32>) {
  let id = g.x + g.y * p.stride;
  let tc = (p.C + 3u) / 4u; // tiles along C
  let tr = (p.R + 3u) / 4u; // tiles along R
  let per = tc * tr;
  if (id >= per * p.batch) {
    return;
  }
  let b = id / per;
  let t = id - b * per;
  let r0 = (t / tc) * 4u;
  let c0 = (t % tc) * 4u;
  let sb = b * p.R * p.C;
  var v: array<vec4<f32>, 4>; // v[i][k] = src[r0 + i, c0 + k]
  for (var i = 0u; i < 4u; i++) {
    let r = r0 + i;
    if (r < p.R) {
      let o = sb + r * p.C + c0;
      var row = vec4<f32>(0.0);
      row.x = src[o];
      if (c0 + 1u < p.C) { row.y = src[o + 1u]; }
      if (c0 + 2u < p.C) { row.z = src[o + 2u]; }
      if (c0 + 3u < p.C) { row.w = src[o + 3u]; }
      v[i] = row;
    }
  }
  for (var k = 0u; k < 4u; k++) {
    let c = c0 + k;
    if (c < p.C) {
      let o = sb + c * p.R + r0;
      dst[o] = v[0][k];
      if (r0 + 1u < p.R) { dst[o + 1u] = v[1][k]; }
      if (r0 + 2u < p.R) { dst[o + 2u] = v[2][k]; }
      if (r0 + 3u < p.R) { dst[o + 3u] = v[3][k]; }
    }
  }
}
