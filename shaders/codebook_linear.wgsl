// Codebook-native linear layers, y (+)= x W, straight from a ClusComp codebook and its packed
// codes (never expanded to a dense W^T). W^T [in, out] is cut along the outputs into d-vectors:
//   y[g*d + j, t] = sum_i x[i, t] * C[split(i) * n + code(i, g), j],  j < d, g*d + j < out,
// code(i, g) = code number i * cols + g of the packed stream (src/format/pack.ts: LSB-first bit
// stream in u32 words, BS bits per code, a code may straddle two words), cols = ceil(out / d),
// split(i) = i / split_rows. Entry points (one per expansion, chosen by FORM):
//   matvec  few tokens: each invocation holds G adjacent (super-)columns (G*D outputs) for NT
//           tokens and walks the input rows; neighbouring lanes hold neighbouring columns, so
//           their code words are neighbours. Per row: the words holding its codes, NT inputs
//           (one vec4 per 4 tokens when aligned), G table entries of DP / VW loads each.
//   lut     LCD's lookup-table form for small n: per code column, the inputs that share a code
//           are summed first (s[code, t] += x[i, t]: in registers for tiny n, selects instead of
//           memory; else a table of 2^B * NT sums per column in workgroup memory), then the sums
//           are multiplied with the codebook: n * d products per column instead of in * d.
//   tile    many tokens: each invocation holds G (super-)columns (G*D outputs) times TQ quads of
//           tokens; p.ln lanes of the 8-lane workgroup lie along the tokens (1 where it pads no
//           more: the lanes then share every input load). The G*D x 4*TQ block is decoded in
//           registers row by row and multiplied as 4-token vec4 outer products.
//   widen   builds the table matvec and tile read when centroids are narrow (see below).
// On llvmpipe (the driver these were tuned on) a per-lane load costs about the same whether it
// fetches a scalar or a vec4 and whether it reads storage or workgroup memory, so every form is
// arranged to load few, wide values per product; workgroup memory only parks results for the
// store loops (unrolled guarded stores would multiply the compile time).
//
// Super-codes: matvec and tile may read P neighbouring codes of a row as one field of B = P * BS
// bits, an index into a table (built by widen, per call) whose entry is those P centroids
// concatenated and zero-padded to DP floats (DP a multiple of 4: one vec4 per 4 floats). P = 1
// and DP = d reads the codebook itself. Outputs then come D = P * d per field.
//
// This file is a template that src/kernels/codebook_linear.ts expands per variant (expandWgsl):
// `${EXPR}` becomes an integer expression over the variables below (or a type name), lines
// between `//#for v < EXPR` and `//#end` repeat, lines between `//#if EXPR` and `//#end` stay when
// EXPR is non-zero. Why not override constants and loops: WGSL forbids override-sized arrays in
// function scope, Mesa's llvmpipe leaves loops of more than ~32 iterations rolled (accumulators
// indexed by a loop variable then live in memory), and Mesa ends a shader after 65,535 loop
// iterations per invocation, counted over nested loops. Unrolled, the only loops are the row
// loop (p.rows iterations), lut's loop over the n codebook entries (table form) and the store
// loops (at most 1024 iterations); the host keeps rows + n below 60,000.
//
// Variables: FORM (1 matvec, 2 lut, 3 tile, 4 widen); BS (bits per code), P (codes per field),
// B (= P * BS, bits per field), MASK (2^B - 1), SMASK (2^BS - 1); D (= P * d, outputs per field),
// DP (floats per table entry), VW (entry components per load: 4, 2 or 1 as DP allows) and CT its
// type; G (fields per invocation), NT (tokens per invocation, matvec and lut), TQ (token quads per
// invocation, tile), XV (x^T read as vec4 of 4 tokens: x_off and ldx multiples of 4) and XT its
// type; lut: LREG (sums in registers), KN (entries with a register sum, = n), KT (entries with a
// table sum, = 2^BS), LCAP (floats of workgroup memory per invocation); WN (code words loaded per
// row) and WT (code words referenced, >= WN; the rest are zero).

const D: u32 = ${D}u;
const B: u32 = ${B}u;
const MASK: u32 = ${MASK}u;

struct Params {
  row0: u32,       // first input row of this dispatch
  rows: u32,       // input rows of this dispatch (widen: table entries)
  cols: u32,       // codes per input row, ceil(out / d) (widen: table entries per split)
  out: u32,        // output features
  N: u32,          // tokens of this dispatch
  ldx: u32,        // x^T row stride, elements
  x_off: u32,      // element of x(0, 0) (token 0 of this dispatch)
  y_off: u32,      // element of y(0, 0)
  y_row: u32,      // elements between outputs m and m + 1
  y_col: u32,      // elements between tokens t and t + 1
  accumulate: u32, // 1: y += result, 0: y = result
  split_rows: u32, // input rows per codebook, in / splits
  n: u32,          // entries per split of the table read (widen: of the codebook)
  gx: u32,         // workgroups along x (matvec, lut: the grid is 2-D, id = x + y * gx)
  ln: u32,         // tile: lanes along the tokens (1, 2, 4 or 8)
  e0: u32,         // lut: first codebook entry of this dispatch's split (rows lie in one split)
}

@group(0) @binding(0) var<uniform> p: Params;
// packed codes of [in, cols] row-major, BS bits each, LSB-first u32 words
@group(0) @binding(1) var<storage, read> codes: array<u32>;
// the table [splits * p.n, DP] row-major (the centroids when P = 1 and DP = d), read as CT
@group(0) @binding(2) var<storage, read> cb: array<${CT}>;
// x^T: element (i, t) at x_off + i * ldx + t (XV: read as vec4 of 4 tokens)
@group(0) @binding(3) var<storage, read> xs: array<${XT}>;
// y: element (m, t) at y_off + m * y_row + t * y_col
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

// Bits [o, o + B) of the 64-bit word pair hi:lo, o < 32.
fn bits2(lo: u32, hi: u32, o: u32) -> u32 {
  return select((lo >> o) | (hi << (32u - o)), lo, o == 0u) & MASK;
}

// The code at bit o < 64 of the 96-bit run w2:w1:w0.
fn bits3(w0: u32, w1: u32, w2: u32, o: u32) -> u32 {
  return select(bits2(w0, w1, o), bits2(w1, w2, o - 32u), o >= 32u);
}

// y(m, t) (+)= v, skipping outputs past out (the padding of the last d-vector) and tokens past N.
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

fn put4(m: u32, t: u32, v: vec4<f32>) {
  put(m, t, v.x);
  put(m, t + 1u, v.y);
  put(m, t + 2u, v.z);
  put(m, t + 3u, v.w);
}

//#if FORM == 1
// matvec: each invocation's G*D x NT accumulators, parked for the store loop.
var<workgroup> mstage: array<f32, ${8 * G * D * NT}>;

@compute @workgroup_size(8)
fn matvec(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let g0 = ((wg.x + wg.y * p.gx) * 8u + lid.x) * ${G}u; // first (super-)column of this invocation
//#for gi < G
//#for t < NT
//#for j < D
  var a${gi}_${t}_${j} = 0.0;
//#end
//#end
//#end
  var kc = p.row0 * p.cols + g0 * ${P}u; // code number of (row, its first code)
  var xi = p.x_off + p.row0 * p.ldx;
  // Lanes past cols read codes of the next row (or clamped words): never stored.
  for (var r = 0u; r < p.rows; r++) {
    let e0 = ((p.row0 + r) / p.split_rows) * p.n;
    let bit = kc * ${BS}u;
    let wa = bit >> 5u;
    let s = bit & 31u;
//#for k < WN
    let w${k} = codes[wa + ${k}u];
//#end
//#for k < WT - WN
    let w${WN + k} = 0u;
//#end
//#if XV
//#for q < NT / 4
    let xq${q} = xs[(xi >> 2u) + ${q}u];
//#end
//#for t < NT
    let x${t} = xq${t / 4}[${t % 4}];
//#end
//#end
//#if !XV
//#for t < NT
    let x${t} = xs[xi + ${t}u];
//#end
//#end
//#for gi < G
    let c${gi} = (e0 + bits3(w${gi * B / 32}, w${gi * B / 32 + 1}, w${gi * B / 32 + 2}, ${gi * B % 32}u + s)) * ${DP / VW}u;
//#for q < DP / VW
    let v${gi}_${q} = cb[c${gi} + ${q}u];
//#end
//#for t < NT
//#for j < D
//#if VW == 1
    a${gi}_${t}_${j} = fma(x${t}, v${gi}_${j}, a${gi}_${t}_${j});
//#end
//#if VW > 1
    a${gi}_${t}_${j} = fma(x${t}, v${gi}_${j / VW}[${j % VW}], a${gi}_${t}_${j});
//#end
//#end
//#end
//#end
    kc += p.cols;
    xi += p.ldx;
  }
  // Through workgroup memory and a loop: unrolled guarded stores would multiply compile time.
  let sb = lid.x * ${G * D * NT}u;
//#for gi < G
//#for t < NT
//#for j < D
  mstage[sb + ${(gi * D + j) * NT + t}u] = a${gi}_${t}_${j};
//#end
//#end
//#end
  for (var e = 0u; e < ${G * D * NT}u; e++) {
    put(g0 * D + e / ${NT}u, e % ${NT}u, mstage[sb + e]);
  }
}

//#end
//#if FORM == 2
// lut: each invocation's LCAP floats: its table of sums (LREG: none), then its G*D*NT results.
var<workgroup> tab: array<f32, ${8 * LCAP}>;

@compute @workgroup_size(8)
fn lut(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let g0 = ((wg.x + wg.y * p.gx) * 8u + lid.x) * ${G}u; // first code column of this invocation
  let tb = lid.x * ${LCAP}u;
//#if LREG
  // s<gi>_<k>_<t>: the sum of x(i, t) over this dispatch's rows i whose code in column g0 + gi
  // is k, in registers (a tiny codebook: a select and an add per entry and row, no memory).
//#for gi < G
//#for k < KN
//#for t < NT
  var s${gi}_${k}_${t} = 0.0;
//#end
//#end
//#end
//#end
  // LREG = 0: those sums at tab[tb + (gi * KT + k) * NT + t] (WGSL zero-initialises workgroup
  // memory).
  var kc = p.row0 * p.cols + g0;
  var xi = p.x_off + p.row0 * p.ldx;
  for (var r = 0u; r < p.rows; r++) {
    let bit = kc * B;
    let wa = bit >> 5u;
    let s = bit & 31u;
//#for k < WN
    let w${k} = codes[wa + ${k}u];
//#end
//#for k < WT - WN
    let w${WN + k} = 0u;
//#end
//#for t < NT
    let x${t} = xs[xi + ${t}u];
//#end
//#for gi < G
    let k${gi} = bits3(w${gi * B / 32}, w${gi * B / 32 + 1}, w${gi * B / 32 + 2}, ${gi * B % 32}u + s);
//#if LREG
//#for kk < KN
//#for t < NT
    s${gi}_${kk}_${t} += select(0.0, x${t}, k${gi} == ${kk}u);
//#end
//#end
//#end
//#if !LREG
//#for t < NT
    tab[tb + (${gi * KT}u + k${gi}) * ${NT}u + ${t}u] += x${t};
//#end
//#end
//#end
    kc += p.cols;
    xi += p.ldx;
  }
//#for gi < G
//#for t < NT
//#for j < D
  var a${gi}_${t}_${j} = 0.0;
//#end
//#end
//#end
  // The codebook of this dispatch's split: every lane reads the same entry.
  var c = p.e0 * ${D / VW}u;
//#if LREG
//#for k < KN
//#for q < D / VW
  let v${k}_${q} = cb[c + ${k * (D / VW) + q}u];
//#end
//#for gi < G
//#for t < NT
//#for j < D
//#if VW == 1
  a${gi}_${t}_${j} = fma(s${gi}_${k}_${t}, v${k}_${j}, a${gi}_${t}_${j});
//#end
//#if VW > 1
  a${gi}_${t}_${j} = fma(s${gi}_${k}_${t}, v${k}_${j / VW}[${j % VW}], a${gi}_${t}_${j});
//#end
//#end
//#end
//#end
//#end
//#end
//#if !LREG
  for (var k = 0u; k < p.n; k++) {
//#for q < D / VW
    let v${q} = cb[c + ${q}u];
//#end
//#for gi < G
//#for t < NT
    let s${gi}_${t} = tab[tb + (${gi * KT}u + k) * ${NT}u + ${t}u];
//#for j < D
//#if VW == 1
    a${gi}_${t}_${j} = fma(s${gi}_${t}, v${j}, a${gi}_${t}_${j});
//#end
//#if VW > 1
    a${gi}_${t}_${j} = fma(s${gi}_${t}, v${j / VW}[${j % VW}], a${gi}_${t}_${j});
//#end
//#end
//#end
//#end
    c += ${D / VW}u;
  }
//#end
  // Results over the table (this invocation's own part of it), then one store loop.
//#for gi < G
//#for t < NT
//#for j < D
  tab[tb + ${(gi * D + j) * NT + t}u] = a${gi}_${t}_${j};
//#end
//#end
//#end
  for (var e = 0u; e < ${G * D * NT}u; e++) {
    put(g0 * D + e / ${NT}u, e % ${NT}u, tab[tb + e]);
  }
}

//#end
//#if FORM == 3
// tile: each invocation's G*D x 4*TQ accumulators (at most 128 vec4, 16 KiB per workgroup).
var<workgroup> tstage: array<vec4<f32>, ${8 * G * D * TQ}>;

@compute @workgroup_size(8)
fn tile(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  // Workgroup (x: token block, y: output block); lanes: ln along the tokens, 8 / ln along the
  // outputs.
  let g0 = (wg.y * (8u / p.ln) + lid.x / p.ln) * ${G}u;
  let t0 = (wg.x * p.ln + lid.x % p.ln) * ${4 * TQ}u;
//#for gi < G
//#for j < D
//#for q < TQ
  var a${gi}_${j}_${q} = vec4<f32>();
//#end
//#end
//#end
  var kc = p.row0 * p.cols + g0 * ${P}u;
  var xi = p.x_off + p.row0 * p.ldx + t0;
  // Tokens past N read other elements of x (or clamped ones) and outputs past out read codes
  // of the next row: neither is stored.
  for (var r = 0u; r < p.rows; r++) {
    let e0 = ((p.row0 + r) / p.split_rows) * p.n;
    let bit = kc * ${BS}u;
    let wa = bit >> 5u;
    let s = bit & 31u;
//#for k < WN
    let w${k} = codes[wa + ${k}u];
//#end
//#for k < WT - WN
    let w${WN + k} = 0u;
//#end
//#for q < TQ
//#if XV
    let x${q} = xs[(xi >> 2u) + ${q}u];
//#end
//#if !XV
    let x${q} = vec4<f32>(xs[xi + ${4 * q}u], xs[xi + ${4 * q + 1}u], xs[xi + ${4 * q + 2}u], xs[xi + ${4 * q + 3}u]);
//#end
//#end
//#for gi < G
    let c${gi} = (e0 + bits3(w${gi * B / 32}, w${gi * B / 32 + 1}, w${gi * B / 32 + 2}, ${gi * B % 32}u + s)) * ${DP / VW}u;
//#for q < DP / VW
    let v${gi}_${q} = cb[c${gi} + ${q}u];
//#end
//#for j < D
//#if VW == 1
    let u${gi}_${j} = vec4<f32>(v${gi}_${j});
//#end
//#if VW > 1
    let u${gi}_${j} = vec4<f32>(v${gi}_${j / VW}[${j % VW}]);
//#end
//#for q < TQ
    a${gi}_${j}_${q} = fma(u${gi}_${j}, x${q}, a${gi}_${j}_${q});
//#end
//#end
//#end
    kc += p.cols;
    xi += p.ldx;
  }
  let sb = lid.x * ${G * D * TQ}u;
//#for gi < G
//#for j < D
//#for q < TQ
  tstage[sb + ${(gi * D + j) * TQ + q}u] = a${gi}_${j}_${q};
//#end
//#end
//#end
  for (var e = 0u; e < ${G * D * TQ}u; e++) {
    put4(g0 * D + e / ${TQ}u, t0 + 4u * (e % ${TQ}u), tstage[sb + e]);
  }
}
//#end

//#if FORM == 4
// widen: the table the matvec and tile forms read when P > 1 or DP > D / P: entry e of split s,
// e < 2^(P * BS), is the concatenation of the centroids of its P codes (e's BS-bit fields, low
// first; a field past n reads entry n - 1), padded with zeros to DP floats, so that one entry is
// DP / 4 vec4 loads. One invocation per float: [splits * 2^(P * BS), DP].
@group(0) @binding(5) var<storage, read> cw: array<f32>;       // centroids [splits * n, D / P]
@group(0) @binding(6) var<storage, read_write> tw: array<f32>; // the table [splits * 2^(P * BS), DP]

@compute @workgroup_size(64)
fn widen(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.gx * 64u;
  let per = p.cols; // entries per split in the table (2^(P * BS)), passed in cols
  if (i >= p.rows * ${DP}u) {
    return;
  }
  let e = i / ${DP}u;
  let c = i % ${DP}u;
  var v = 0.0;
  if (c < D) {
    let d = D / ${P}u;
    let field = (e % per) >> ((c / d) * ${BS}u);
    let k = min(field & ${SMASK}u, p.n - 1u);
    v = cw[((e / per) * p.n + k) * d + c % d];
  }
  tw[i] = v;
}
//#end
