// General f32 matmul: C[M, N] (=|+=) sum_k At[k, m] * B[k, n], with At stored [K, M] ("A
// transposed"), all row-major with leading dimensions and element offsets, batched over
// workgroup z (batch i reads A batch floor(i / a_div) and B batch floor(i / b_div): GQA).
//
// Tiling for llvmpipe: every per-invocation (non-constant-address) load costs about as much as
// ~20 FMAs there, so each invocation owns a 24x24 block of C held in 36 mat4x4
// accumulators and reads 6 vec4 of At and 6 vec4 of B per k step. A workgroup is one
// 8-wide SIMD group: 8 / LN invocations along m times LN along n. Loads are not bounds-checked
// against M, N: lanes past the edge read padding or out-of-range words (WebGPU clamps or
// zeroes them), which only ever reach accumulators that are never stored. Stores are guarded.
// The k loop runs p.K times per invocation: the host keeps p.K below Mesa's 65,535-iteration
// cap by splitting K over dispatches.

override VEC_A: bool = false; // At rows read as vec4 (a_off, lda, a_bstride multiples of 4)
override VEC_B: bool = false; // B rows read as vec4 (b_off, ldb, b_bstride multiples of 4)
override ACCUMULATE: bool = false; // C += result instead of C = result
override LN: u32 = 8u; // invocations along n per workgroup (1, 2, 4 or 8); 8 / LN along m

const TM = 24u; // rows of C per invocation
const TN = 24u; // columns of C per invocation

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
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> at4: array<vec4<f32>>; // At [K, M/4] row-major (VEC_A)
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>; // B [K, N/4] row-major (VEC_B)
@group(0) @binding(3) var<storage, read_write> c: array<f32>; // C [M, N] row-major, stride ldc
@group(0) @binding(4) var<storage, read> at1: array<f32>; // At [K, M] row-major (same range as 1)
@group(0) @binding(5) var<storage, read> b1: array<f32>; // B [K, N] row-major (same range as 2)

// At(k, m .. m + 3) where i is the element index of At(k, m).
fn load_a(i: u32) -> vec4<f32> {
  if (VEC_A) {
    return at4[i >> 2u];
  }
  return vec4<f32>(at1[i], at1[i + 1u], at1[i + 2u], at1[i + 3u]);
}

// B(k, n .. n + 3) where i is the element index of B(k, n).
fn load_b(i: u32) -> vec4<f32> {
  if (VEC_B) {
    return b4[i >> 2u];
  }
  return vec4<f32>(b1[i], b1[i + 1u], b1[i + 2u], b1[i + 3u]);
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

fn put1(i: u32, v: f32) {
  if (ACCUMULATE) {
    c[i] = c[i] + v;
  } else {
    c[i] = v;
  }
}

// Stores C(m, n .. n + 3) = v, skipping what lies past M or N. base = element of C(0, 0).
fn put(base: u32, m: u32, n: u32, v: vec4<f32>) {
  if (m >= p.M) {
    return;
  }
  let i = base + m * p.ldc + n;
  if (n + 3u < p.N) {
    put1(i, v.x);
    put1(i + 1u, v.y);
    put1(i + 2u, v.z);
    put1(i + 3u, v.w);
    return;
  }
  if (n < p.N) {
    put1(i, v.x);
  }
  if (n + 1u < p.N) {
    put1(i + 1u, v.y);
  }
  if (n + 2u < p.N) {
    put1(i + 2u, v.z);
  }
}

// Stores the 4x4 block acc at C(m .. m + 3, n .. n + 3).
fn put4(base: u32, m: u32, n: u32, acc: mat4x4<f32>) {
  put(base, m, n, acc[0]);
  put(base, m + 1u, n, acc[1]);
  put(base, m + 2u, n, acc[2]);
  put(base, m + 3u, n, acc[3]);
}

@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let LM = 8u / LN;
  let m0 = (wg.y * LM + lid.x / LN) * TM;
  let n0 = (wg.x * LN + lid.x % LN) * TN;
  let z = p.z0 + wg.z;
  var ia = p.a_off + (z / p.a_div - p.z0 / p.a_div) * p.a_bstride + m0; // At(k, m0)
  var ib = p.b_off + (z / p.b_div - p.z0 / p.b_div) * p.b_bstride + n0; // B(k, n0)
  let cbase = p.c_off + wg.z * p.c_bstride;

  var c00 = mat4x4<f32>(); var c01 = mat4x4<f32>(); var c02 = mat4x4<f32>(); var c03 = mat4x4<f32>(); var c04 = mat4x4<f32>(); var c05 = mat4x4<f32>();
  var c10 = mat4x4<f32>(); var c11 = mat4x4<f32>(); var c12 = mat4x4<f32>(); var c13 = mat4x4<f32>(); var c14 = mat4x4<f32>(); var c15 = mat4x4<f32>();
  var c20 = mat4x4<f32>(); var c21 = mat4x4<f32>(); var c22 = mat4x4<f32>(); var c23 = mat4x4<f32>(); var c24 = mat4x4<f32>(); var c25 = mat4x4<f32>();
  var c30 = mat4x4<f32>(); var c31 = mat4x4<f32>(); var c32 = mat4x4<f32>(); var c33 = mat4x4<f32>(); var c34 = mat4x4<f32>(); var c35 = mat4x4<f32>();
  var c40 = mat4x4<f32>(); var c41 = mat4x4<f32>(); var c42 = mat4x4<f32>(); var c43 = mat4x4<f32>(); var c44 = mat4x4<f32>(); var c45 = mat4x4<f32>();
  var c50 = mat4x4<f32>(); var c51 = mat4x4<f32>(); var c52 = mat4x4<f32>(); var c53 = mat4x4<f32>(); var c54 = mat4x4<f32>(); var c55 = mat4x4<f32>();
  for (var k = 0u; k < p.K; k++) {
    let a0 = load_a(ia); let a1 = load_a(ia + 4u); let a2 = load_a(ia + 8u); let a3 = load_a(ia + 12u); let a4 = load_a(ia + 16u); let a5 = load_a(ia + 20u);
    let b0 = load_b(ib); let b1 = load_b(ib + 4u); let b2 = load_b(ib + 8u); let b3 = load_b(ib + 12u); let b4 = load_b(ib + 16u); let b5 = load_b(ib + 20u);
    c00 = op(a0, b0, c00); c01 = op(a0, b1, c01); c02 = op(a0, b2, c02); c03 = op(a0, b3, c03); c04 = op(a0, b4, c04); c05 = op(a0, b5, c05);
    c10 = op(a1, b0, c10); c11 = op(a1, b1, c11); c12 = op(a1, b2, c12); c13 = op(a1, b3, c13); c14 = op(a1, b4, c14); c15 = op(a1, b5, c15);
    c20 = op(a2, b0, c20); c21 = op(a2, b1, c21); c22 = op(a2, b2, c22); c23 = op(a2, b3, c23); c24 = op(a2, b4, c24); c25 = op(a2, b5, c25);
    c30 = op(a3, b0, c30); c31 = op(a3, b1, c31); c32 = op(a3, b2, c32); c33 = op(a3, b3, c33); c34 = op(a3, b4, c34); c35 = op(a3, b5, c35);
    c40 = op(a4, b0, c40); c41 = op(a4, b1, c41); c42 = op(a4, b2, c42); c43 = op(a4, b3, c43); c44 = op(a4, b4, c44); c45 = op(a4, b5, c45);
    c50 = op(a5, b0, c50); c51 = op(a5, b1, c51); c52 = op(a5, b2, c52); c53 = op(a5, b3, c53); c54 = op(a5, b4, c54); c55 = op(a5, b5, c55);
    ia += p.lda;
    ib += p.ldb;
  }
  put4(cbase, m0, n0, c00); put4(cbase, m0, n0 + 4u, c01); put4(cbase, m0, n0 + 8u, c02); put4(cbase, m0, n0 + 12u, c03); put4(cbase, m0, n0 + 16u, c04); put4(cbase, m0, n0 + 20u, c05);
  put4(cbase, m0 + 4u, n0, c10); put4(cbase, m0 + 4u, n0 + 4u, c11); put4(cbase, m0 + 4u, n0 + 8u, c12); put4(cbase, m0 + 4u, n0 + 12u, c13); put4(cbase, m0 + 4u, n0 + 16u, c14); put4(cbase, m0 + 4u, n0 + 20u, c15);
  put4(cbase, m0 + 8u, n0, c20); put4(cbase, m0 + 8u, n0 + 4u, c21); put4(cbase, m0 + 8u, n0 + 8u, c22); put4(cbase, m0 + 8u, n0 + 12u, c23); put4(cbase, m0 + 8u, n0 + 16u, c24); put4(cbase, m0 + 8u, n0 + 20u, c25);
  put4(cbase, m0 + 12u, n0, c30); put4(cbase, m0 + 12u, n0 + 4u, c31); put4(cbase, m0 + 12u, n0 + 8u, c32); put4(cbase, m0 + 12u, n0 + 12u, c33); put4(cbase, m0 + 12u, n0 + 16u, c34); put4(cbase, m0 + 12u, n0 + 20u, c35);
  put4(cbase, m0 + 16u, n0, c40); put4(cbase, m0 + 16u, n0 + 4u, c41); put4(cbase, m0 + 16u, n0 + 8u, c42); put4(cbase, m0 + 16u, n0 + 12u, c43); put4(cbase, m0 + 16u, n0 + 16u, c44); put4(cbase, m0 + 16u, n0 + 20u, c45);
  put4(cbase, m0 + 20u, n0, c50); put4(cbase, m0 + 20u, n0 + 4u, c51); put4(cbase, m0 + 20u, n0 + 8u, c52); put4(cbase, m0 + 20u, n0 + 12u, c53); put4(cbase, m0 + 20u, n0 + 16u, c54); put4(cbase, m0 + 20u, n0 + 20u, c55);
}
