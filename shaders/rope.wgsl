// Rotary position embedding in place on feature-major Q^T or K^T, HF rotate_half layout: for
// each head and d < headDim/2, with c = cos[t, d] and s = sin[t, d] (host tables, see ropeTables):
//   x[d]        = x[d] * c - x[d + headDim/2] * s
//   x[d + half] = x[d + headDim/2] * c + x[d] * s
// One invocation per (d, t) loads its cos/sin once and loops over the heads (nHeads iterations);
// neighbouring lanes are neighbouring tokens, so the x loads and stores are coalesced.
// With SIGN = -1 it rotates by the negative angle: the backward pass, in place on the gradient.
// Rows may be longer than T (ld >= T) and start at column c0: a KV cache [kvDim, context] is
// rotated in place for the tokens just written at columns c0 .. c0 + T - 1.

override SIGN: f32 = 1.0;

struct Params {
  nHeads: u32,
  headDim: u32, // even
  T: u32,       // tokens
  stride: u32,  // workgroups along x times 64 (id = x + y * stride)
  ld: u32,      // elements between rows of x (T for a dense [rows, T])
  c0: u32,      // column of token 0
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>; // [nHeads * headDim, ld], columns c0.., in place
@group(0) @binding(2) var<storage, read> cosT: array<f32>;    // [T, headDim / 2]
@group(0) @binding(3) var<storage, read> sinT: array<f32>;    // [T, headDim / 2]

@compute @workgroup_size(64)
fn rope(@builtin(global_invocation_id) g: vec3<u32>) {
  let hd2 = p.headDim / 2u;
  let id = g.x + g.y * p.stride;
  if (id >= hd2 * p.T) {
    return;
  }
  let d = id / p.T;
  let t = id % p.T;
  let c = cosT[t * hd2 + d];
  let s = SIGN * sinT[t * hd2 + d];
  let off = hd2 * p.ld;
  for (var h = 0u; h < p.nHeads; h++) {
    let i1 = (h * p.headDim + d) * p.ld + p.c0 + t;
    let x1 = x[i1];
    let x2 = x[i1 + off];
    x[i1] = x1 * c - x2 * s;
    x[i1 + off] = x2 * c + x1 * s;
  }
}
