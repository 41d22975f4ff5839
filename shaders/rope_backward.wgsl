// Backward of rotary position embedding (shaders/rope.wgsl), in place on the gradient of
// feature-major Q^T or K^T. The forward rotates each pair (x[d], x[d + headDim/2]) by the angle
// of (t, d); its transpose rotates the gradient by the negative angle: with c = cos[t, d] and
// s = sin[t, d] (the same host tables as the forward, see ropeTables),
//   g[d]        = g[d] * c + g[d + headDim/2] * s
//   g[d + half] = g[d + headDim/2] * c - g[d] * s
// One invocation per (d, t) loops over the heads (nHeads iterations), as the forward.

struct Params {
  nHeads: u32,
  headDim: u32, // even
  T: u32,       // tokens
  stride: u32,  // workgroups along x times 64 (id = x + y * stride)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>; // [nHeads * headDim, T], in place
@group(0) @binding(2) var<storage, read> cosT: array<f32>;    // [T, headDim / 2]
@group(0) @binding(3) var<storage, read> sinT: array<f32>;    // [T, headDim / 2]

@compute @workgroup_size(64)
fn rope_backward(@builtin(global_invocation_id) g: vec3<u32>) {
  let hd2 = p.headDim / 2u;
  let id = g.x + g.y * p.stride;
  if (id >= hd2 * p.T) {
    return;
  }
  let d = id / p.T;
  let t = id % p.T;
  let c = cosT[t * hd2 + d];
  let s = sinT[t * hd2 + d];
  let off = hd2 * p.T;
  for (var h = 0u; h < p.nHeads; h++) {
    let i1 = (h * p.headDim + d) * p.T + t;
    let x1 = x[i1];
    let x2 = x[i1 + off];
    x[i1] = x1 * c + x2 * s;
    x[i1 + off] = x2 * c - x1 * s;
  }
}
