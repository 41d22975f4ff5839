// General f32 matmul: C[M, N] (=|+=) sum_k At[k, m] * B[k, n], with At stored [K, M] ("A
// transposed"), all row-major with leading dimensions and element offsets, batched over
// workgroup z (batch i reads A batch floor(i / a_div) and B batch floor(i / b_div): GQA).
// src/kernels/matmul.ts plans the dispatches (binding ranges, K chunks, variants).
//
// Tiling for llvmpipe: a load whose address is not a compile-time constant runs a loop over the
// 8 lanes there (one vec4 costs about as much as 50 FMAs), so each invocation owns a 32x16
// block of C in 32 mat4x4 accumulators and reads 8 vec4 of At and 4 vec4 of B per k step
// (the unrolled lines are c{i}{j} = op(a{i}, b{j}, c{i}{j}) for i < TM/4, j < TN/4; MATMUL_TM
// and MATMUL_TN in the TypeScript must match TM and TN). A workgroup is one 8-wide SIMD group:
// 8 / ln invocations along m times ln along n. Loads are not checked against M, N: lanes past
// the edge read padding or out-of-range words (WebGPU clamps or zeroes them), which only reach
// accumulators that are never stored. Stores are guarded, and go through workgroup memory and
// a loop, which keeps each variant's compile time near one second.
//
// Mesa ends a loop after 65,535 iterations per invocation: the k loop runs p.K times (the host
// keeps p.K <= 32,768) and the store loops at most 32 * (1 + 4 * 5) times.

override VEC_A: bool = false; // At rows read as vec4 (a_off, lda, a_bstride multiples of 4)
override VEC_B: bool = false; // B rows read as vec4 (b_off, ldb, b_bstride multiples of 4)
override VEC_C: bool = false; // C rows written as vec4 (c_off, ldc, c_bstride multiples of 4)

const TM = 32u; // rows of C per invocation
const TN = 16u; // columns of C per invocation

struct Params {
  M: u32, // rows of C (this dispatch)
  N: u32, // columns of C
  K: u32, // reduction length (this dispatch)
  lda: u32, // At row stride, elements
  ldb: u32, // B row stride, elements
  ldc: u32, // C row stride, elements
  a_off: u32, // element of At(0, 0) in the bound range
  b_off: u32, // element of B(0, 0) in the bound range
  c_off: u32, // element of C(0, 0) in the bound range
  a_bstride: u32, // elements between A batches
  b_bstride: u32, // elements between B batches
  c_bstride: u32, // elements between C batches
  a_div: u32, // batch z reads A batch (z0 + z) / a_div - z0 / a_div
  b_div: u32, // likewise for B
  z0: u32, // global batch index of workgroup z = 0
  ln: u32, // invocations along n per workgroup (1, 2, 4 or 8); 8 / ln along m
  accumulate: u32, // 1: C += result, 0: C = result
  group_m: u32, // tile rows per group in the workgroup order (>= 1), see main()
}

@group(0) @binding(0) var<uniform> p: Params;
// At [K, M/4], row stride lda/4 (VEC_A)
@group(0) @binding(1) var<storage, read> at_v: array<vec4<f32>>;
// B [K, N/4], row stride ldb/4 (VEC_B)
@group(0) @binding(2) var<storage, read> b_v: array<vec4<f32>>;
// C [M, N], row stride ldc
@group(0) @binding(3) var<storage, read_write> c_s: array<f32>;
// At [K, M], row stride lda: the same range as binding 1
@group(0) @binding(4) var<storage, read> at_s: array<f32>;
// B [K, N], row stride ldb: the same range as binding 2
@group(0) @binding(5) var<storage, read> b_s: array<f32>;
// C [M, N/4], row stride ldc/4: the same range as binding 3 (VEC_C)
@group(0) @binding(6) var<storage, read_write> c_v: array<vec4<f32>>;

// At(k, m .. m + 3) where i is the element index of At(k, m).
fn load_a(i: u32) -> vec4<f32> {
  if (VEC_A) {
    return at_v[i >> 2u];
  }
  return vec4<f32>(at_s[i], at_s[i + 1u], at_s[i + 2u], at_s[i + 3u]);
}

// B(k, n .. n + 3) where i is the element index of B(k, n).
fn load_b(i: u32) -> vec4<f32> {
  if (VEC_B) {
    return b_v[i >> 2u];
  }
  return vec4<f32>(b_s[i], b_s[i + 1u], b_s[i + 2u], b_s[i + 3u]);
}

// acc[r] += a[r] * b: a 4x4 outer-product update (acc[r] holds C row r, 4 columns).
fn op(a: vec4<f32>, b: vec4<f32>, acc: mat4x4<f32>) -> mat4x4<f32> {
  return mat4x4<f32>(
    fma(vec4<f32>(a.x), b, acc[0]),
    fma(vec4<f32>(a.y), b, acc[1]),
    fma(vec4<f32>(a.z), b, acc[2]),
    fma(vec4<f32>(a.w), b, acc[3]),
  );
}

// Stores C(m, n .. n + 3) = v (or adds it), skipping what lies past M or N.
fn put(base: u32, m: u32, n: u32, v: vec4<f32>) {
  if (m >= p.M) {
    return;
  }
  let i = base + m * p.ldc + n;
  if (VEC_C && n + 3u < p.N) {
    if (p.accumulate != 0u) {
      c_v[i >> 2u] = c_v[i >> 2u] + v;
    } else {
      c_v[i >> 2u] = v;
    }
    return;
  }
  for (var e = 0u; e < 4u; e++) {
    if (n + e < p.N) {
      if (p.accumulate != 0u) {
        c_s[i + e] = c_s[i + e] + v[e];
      } else {
        c_s[i + e] = v[e];
      }
    }
  }
}

// Each invocation's 32x16 block of C as 32 rows of 4 vec4 (16 KiB per workgroup).
var<workgroup> stage: array<vec4<f32>, 1024>;

// Parks the 4x4 block acc at stage[s + r * 4], r = 0 .. 3.
fn stash(s: u32, acc: mat4x4<f32>) {
  stage[s] = acc[0];
  stage[s + 4u] = acc[1];
  stage[s + 8u] = acc[2];
  stage[s + 12u] = acc[3];
}

@compute @workgroup_size(8)
fn main(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
) {
  // llvmpipe runs workgroups in linear order (x fastest). Renumber the (tile_m, tile_n) grid
  // in groups of group_m tile rows, column by column inside a group: consecutive workgroups
  // share one panel of B and the group's panels of At stay in cache.
  let lin = wg.x + wg.y * nwg.x;
  let per_group = p.group_m * nwg.x;
  let first_m = (lin / per_group) * p.group_m;
  let rows = min(nwg.y - first_m, p.group_m);
  let tile_m = first_m + (lin % per_group) % rows;
  let tile_n = (lin % per_group) / rows;
  let m0 = (tile_m * (8u / p.ln) + lid.x / p.ln) * TM;
  let n0 = (tile_n * p.ln + lid.x % p.ln) * TN;
  let z = p.z0 + wg.z;
  var ia = p.a_off + (z / p.a_div - p.z0 / p.a_div) * p.a_bstride + m0; // At(k, m0)
  var ib = p.b_off + (z / p.b_div - p.z0 / p.b_div) * p.b_bstride + n0; // B(k, n0)
  let cbase = p.c_off + wg.z * p.c_bstride;

  var c00: mat4x4<f32>; var c01: mat4x4<f32>; var c02: mat4x4<f32>; var c03: mat4x4<f32>;
  var c10: mat4x4<f32>; var c11: mat4x4<f32>; var c12: mat4x4<f32>; var c13: mat4x4<f32>;
  var c20: mat4x4<f32>; var c21: mat4x4<f32>; var c22: mat4x4<f32>; var c23: mat4x4<f32>;
  var c30: mat4x4<f32>; var c31: mat4x4<f32>; var c32: mat4x4<f32>; var c33: mat4x4<f32>;
  var c40: mat4x4<f32>; var c41: mat4x4<f32>; var c42: mat4x4<f32>; var c43: mat4x4<f32>;
  var c50: mat4x4<f32>; var c51: mat4x4<f32>; var c52: mat4x4<f32>; var c53: mat4x4<f32>;
  var c60: mat4x4<f32>; var c61: mat4x4<f32>; var c62: mat4x4<f32>; var c63: mat4x4<f32>;
  var c70: mat4x4<f32>; var c71: mat4x4<f32>; var c72: mat4x4<f32>; var c73: mat4x4<f32>;
  for (var k = 0u; k < p.K; k++) {
    let a0 = load_a(ia);
    let a1 = load_a(ia + 4u);
    let a2 = load_a(ia + 8u);
    let a3 = load_a(ia + 12u);
    let a4 = load_a(ia + 16u);
    let a5 = load_a(ia + 20u);
    let a6 = load_a(ia + 24u);
    let a7 = load_a(ia + 28u);
    let b0 = load_b(ib);
    let b1 = load_b(ib + 4u);
    let b2 = load_b(ib + 8u);
    let b3 = load_b(ib + 12u);
    c00 = op(a0, b0, c00); c01 = op(a0, b1, c01); c02 = op(a0, b2, c02); c03 = op(a0, b3, c03);
    c10 = op(a1, b0, c10); c11 = op(a1, b1, c11); c12 = op(a1, b2, c12); c13 = op(a1, b3, c13);
    c20 = op(a2, b0, c20); c21 = op(a2, b1, c21); c22 = op(a2, b2, c22); c23 = op(a2, b3, c23);
    c30 = op(a3, b0, c30); c31 = op(a3, b1, c31); c32 = op(a3, b2, c32); c33 = op(a3, b3, c33);
    c40 = op(a4, b0, c40); c41 = op(a4, b1, c41); c42 = op(a4, b2, c42); c43 = op(a4, b3, c43);
    c50 = op(a5, b0, c50); c51 = op(a5, b1, c51); c52 = op(a5, b2, c52); c53 = op(a5, b3, c53);
    c60 = op(a6, b0, c60); c61 = op(a6, b1, c61); c62 = op(a6, b2, c62); c63 = op(a6, b3, c63);
    c70 = op(a7, b0, c70); c71 = op(a7, b1, c71); c72 = op(a7, b2, c72); c73 = op(a7, b3, c73);
    ia += p.lda;
    ib += p.ldb;
  }
  let sb = lid.x * 128u;
  stash(sb + 0u, c00); stash(sb + 1u, c01); stash(sb + 2u, c02); stash(sb + 3u, c03);
  stash(sb + 16u, c10); stash(sb + 17u, c11); stash(sb + 18u, c12); stash(sb + 19u, c13);
  stash(sb + 32u, c20); stash(sb + 33u, c21); stash(sb + 34u, c22); stash(sb + 35u, c23);
  stash(sb + 48u, c30); stash(sb + 49u, c31); stash(sb + 50u, c32); stash(sb + 51u, c33);
  stash(sb + 64u, c40); stash(sb + 65u, c41); stash(sb + 66u, c42); stash(sb + 67u, c43);
  stash(sb + 80u, c50); stash(sb + 81u, c51); stash(sb + 82u, c52); stash(sb + 83u, c53);
  stash(sb + 96u, c60); stash(sb + 97u, c61); stash(sb + 98u, c62); stash(sb + 99u, c63);
  stash(sb + 112u, c70); stash(sb + 113u, c71); stash(sb + 114u, c72); stash(sb + 115u, c73);
  if (VEC_C && m0 + TM <= p.M && n0 + TN <= p.N) {
    // Whole block inside C: unguarded vec4 rows.
    for (var r = 0u; r < TM; r++) {
      let row = (cbase + (m0 + r) * p.ldc + n0) >> 2u;
      for (var j = 0u; j < 4u; j++) {
        let v = stage[sb + r * 4u + j];
        if (p.accumulate != 0u) {
          c_v[row + j] = c_v[row + j] + v;
        } else {
          c_v[row + j] = v;
        }
      }
    }
  } else {
    for (var r = 0u; r < TM; r++) {
      for (var j = 0u; j < 4u; j++) {
        put(cbase, m0 + r, n0 + 4u * j, stage[sb + r * 4u + j]);
      }
    }
  }
}
