// Dense linear layers for a few tokens (decoding), where the tiled matmul would waste most of its
// 32x16 block per invocation:
//   dense  y(m, t) (+)= sum_i x(i, t) * wT[i, m] for W^T [in, out] row-major. Each invocation holds
//          V quads of output columns for NT tokens; lane l of a workgroup takes quads
//          q0 + l + 8 v (v < V), so the 8 lanes read 128 contiguous bytes of a row per load.
//   rows   y(m, t) (+)= sum_i w[m, i] * x(i, t) for W [out, in] row-major (a tied LM head reading
//          the embedding). Each invocation holds R rows of W and walks along them four inputs at
//          a time: every lane streams its own rows, and the inputs are the same for all lanes.
// x^T: element (i, t) at x_off + i * ldx + t; y: element (m, t) at y_off + m * y_row + t * y_col.
//
// A template expanded by src/kernels/matvec.ts (expandWgsl in src/kernels/codebook_linear.ts):
// `${EXPR}` is an integer expression over the variables, `//#for v < EXPR` .. `//#end` repeats
// lines, `//#if EXPR` .. `//#end` keeps them when EXPR is non-zero. Unrolled, the accumulators stay
// in registers and the only loops are the walk over the inputs (the host keeps it under 60,000
// iterations: Mesa ends a shader after 65,535 loop iterations per invocation) and the store loop.
// Variables: FORM (1 dense, 2 rows), NT (tokens per invocation), V (dense: column quads per
// invocation), VEC (dense: W^T rows read as vec4, out % 4 == 0; rows: W rows read as vec4,
// in % 4 == 0) and WTY its type, R (rows: rows of W per invocation), XV (x^T read as vec4: dense,
// the NT tokens of a row, NT a multiple of 4, x_off and ldx multiples of 4; rows, four inputs of
// one token, NT = 1, ldx = 1, x_off a multiple of 4) and XTY its type.

struct Params {
  row0: u32,       // dense: first input row of this dispatch; rows: first input (a multiple of 4)
  rows: u32,       // dense: input rows of this dispatch; rows: input quads of this dispatch
  out: u32,        // dense: output features; rows: rows of W in this dispatch's chunk
  in_dim: u32,     // input features (rows: the row stride of W)
  N: u32,          // tokens of this dispatch
  ldx: u32,        // x^T row stride, elements
  x_off: u32,      // element of x(0, 0)
  y_off: u32,      // element of y(0, 0) (rows: of the chunk's first row)
  y_row: u32,      // elements between outputs m and m + 1
  y_col: u32,      // elements between tokens t and t + 1
  accumulate: u32, // 1: y += result, 0: y = result
  gx: u32,         // workgroups along x (the grid is 2-D, id = x + y * gx)
}

@group(0) @binding(0) var<uniform> p: Params;
// dense: W^T [in, out] row-major; rows: one chunk of W [out, in] row-major (VEC: as vec4)
@group(0) @binding(1) var<storage, read> w: array<${WTY}>;
// x^T: element (i, t) at x_off + i * ldx + t (XV: read as vec4, see the entry points)
@group(0) @binding(2) var<storage, read> xs: array<${XTY}>;
// y: element (m, t) at y_off + m * y_row + t * y_col
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

// y(m, t) (+)= v, skipping outputs past out and tokens past N.
fn put(m: u32, t: u32, v: f32) {
  if (m < p.out && t < p.N) {
    let a = p.y_off + m * p.y_row + t * p.y_col;
    if (p.accumulate != 0u) {
      y[a] = y[a] + v;
    } else {
      y[a] = v;
    }
  }
}

//#if FORM == 1
// Each invocation's V x NT accumulator quads, parked for the store loop.
var<workgroup> stage: array<vec4<f32>, ${8 * V * NT}>;

@compute @workgroup_size(8)
fn dense(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let q0 = (wg.x + wg.y * p.gx) * ${8 * V}u + lid.x; // this lane's first column quad
//#for v < V
//#for t < NT
  var a${v}_${t} = vec4<f32>();
//#end
//#end
  var wi = p.row0 * p.out + q0 * 4u; // element of W^T(row, 4 q0)
  var xi = p.x_off + p.row0 * p.ldx;
  // Quads past out read the next row (or clamped elements): never stored.
  for (var r = 0u; r < p.rows; r++) {
//#if XV
//#for q < NT / 4
    let xq${q} = xs[(xi >> 2u) + ${q}u];
//#end
//#for t < NT
    let x${t} = vec4<f32>(xq${t / 4}[${t % 4}]);
//#end
//#end
//#if !XV
//#for t < NT
    let x${t} = vec4<f32>(xs[xi + ${t}u]);
//#end
//#end
//#for v < V
//#if VEC
    let w${v} = w[(wi >> 2u) + ${8 * v}u];
//#end
//#if !VEC
    let w${v} = vec4<f32>(w[wi + ${32 * v}u], w[wi + ${32 * v + 1}u], w[wi + ${32 * v + 2}u], w[wi + ${32 * v + 3}u]);
//#end
//#for t < NT
    a${v}_${t} = fma(x${t}, w${v}, a${v}_${t});
//#end
//#end
    wi += p.out;
    xi += p.ldx;
  }
  let sb = lid.x * ${V * NT}u;
//#for v < V
//#for t < NT
  stage[sb + ${v * NT + t}u] = a${v}_${t};
//#end
//#end
  for (var e = 0u; e < ${V * NT}u; e++) {
    let m = (q0 + 8u * (e / ${NT}u)) * 4u;
    let t = e % ${NT}u;
    let a = stage[sb + e];
    put(m, t, a.x);
    put(m + 1u, t, a.y);
    put(m + 2u, t, a.z);
    put(m + 3u, t, a.w);
  }
}
//#end

//#if FORM == 2
// Each invocation's R x NT partial sums (one per input position mod 4), parked for the store loop.
var<workgroup> stage: array<vec4<f32>, ${8 * R * NT}>;

@compute @workgroup_size(8)
fn rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let m0 = ((wg.x + wg.y * p.gx) * 8u + lid.x) * ${R}u; // this lane's first row of W
//#for k < R
//#for t < NT
  var a${k}_${t} = vec4<f32>();
//#end
//#end
  // Rows past the chunk read other rows (or clamped elements): never stored.
  var wi = m0 * p.in_dim + p.row0; // element of W(m0, i)
  var xi = p.x_off + p.row0 * p.ldx;
  for (var r = 0u; r < p.rows; r++) {
    // The last quad may run past in: its missing inputs count as zero.
    let live = vec4<u32>(p.row0 + 4u * r) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.in_dim);
//#if XV
    let x0 = select(vec4<f32>(), xs[xi >> 2u], live);
//#end
//#if !XV
//#for t < NT
    let x${t} = select(vec4<f32>(), vec4<f32>(xs[xi + ${t}u], xs[xi + p.ldx + ${t}u], xs[xi + 2u * p.ldx + ${t}u], xs[xi + 3u * p.ldx + ${t}u]), live);
//#end
//#end
//#for k < R
//#if VEC
    let w${k} = w[(wi >> 2u) + ${k}u * (p.in_dim >> 2u)];
//#end
//#if !VEC
    let b${k} = wi + ${k}u * p.in_dim;
    let w${k} = select(vec4<f32>(), vec4<f32>(w[b${k}], w[b${k} + 1u], w[b${k} + 2u], w[b${k} + 3u]), live);
//#end
//#for t < NT
    a${k}_${t} = fma(x${t}, w${k}, a${k}_${t});
//#end
//#end
    wi += 4u;
    xi += 4u * p.ldx;
  }
  let sb = lid.x * ${R * NT}u;
//#for k < R
//#for t < NT
  stage[sb + ${k * NT + t}u] = a${k}_${t};
//#end
//#end
  for (var e = 0u; e < ${R * NT}u; e++) {
    let a = stage[sb + e];
    put(m0 + e / ${NT}u, e % ${NT}u, (a.x + a.y) + (a.z + a.w));
  }
}
//#end
