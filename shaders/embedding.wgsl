// Embedding lookup into feature-major activations: out[h, t] = table[ids[t] - row0, h] for the
// tokens whose id falls in this binding's rows [row0, row0 + V); other columns are left as they
// are, so a vocabulary bound in row chunks is covered by one dispatch per chunk.
// One invocation per output element (id = h * T + t): stores are coalesced.

struct Params {
  V: u32,      // table rows in this binding
  H: u32,      // hidden size
  T: u32,      // tokens
  row0: u32,   // vocabulary id of the binding's first row
  stride: u32, // workgroups along x times 256 (id = x + y * stride)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<f32>;      // [V, H] row-major
@group(0) @binding(2) var<storage, read> ids: array<u32>;        // [T]
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // [H, T] feature-major

@compute @workgroup_size(256)
fn embed(@builtin(global_invocation_id) g: vec3<u32>) {
  let id = g.x + g.y * p.stride;
  if (id >= p.H * p.T) {
    return;
  }
  let h = id / p.T;
  let t = id % p.T;
  let tok = ids[t];
  if (tok >= p.row0 && tok - p.row0 < p.V) {
    out[id] = table[(tok - p.row0) * p.H + h];
  }
}
