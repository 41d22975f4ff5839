// Codebook-native linear layers: y = x W for a ClusComp layer held as packed codes plus its
// codebook, never expanded to a dense matrix. W^T [in, out] is cut along the output channels
// into d-vectors: y[g*d + j] = sum_i x[i] * C[split(i) * n + code(i, g), j] for j < d and
// g*d + j < out, code(i, g) = packed code number i * cols + g, cols = ceil(out / d).
// Three forms (shaders/codebook_linear.wgsl, a template expanded per shape): "matvec" and "lut"
// for a few tokens, "tile" for many. chooseForm picks one from measurements (see there).
import code from "../../shaders/codebook_linear.wgsl" with { type: "text" };
import { codeBits, type CodebookShape, packedWords } from "../io/pack.ts";
import { type Gpu, grid } from "../gpu/device.ts";
import { templateModule, type WgslVars } from "../gpu/template.ts";

/** A ClusComp linear layer on the GPU. */
export interface CodebookLayer extends CodebookShape {
  /** f32 [splits * n, d]. */
  centroids: GPUBuffer;
  /** u32 words: the packed codes of [in, ceil(out / d)] row-major (src/io/pack.ts). */
  codes: GPUBuffer;
}

/**
 * Input and output of a linear over N tokens. x^T is feature-major: element (i, t) at
 * xOffset + i * ldx + t (elements, f32). y element (m, t) at yOffset + m * yRow + t * yCol:
 * feature-major output [out, N] has yRow = ldy, yCol = 1; token-major [N, out] has yRow = 1,
 * yCol = ldy. Buffers are bound whole (each must fit one binding); offsets travel as uniforms.
 */
export interface LinearIO {
  N: number;
  x: GPUBuffer;
  xOffset?: number;
  ldx: number;
  y: GPUBuffer;
  yOffset?: number;
  yRow: number;
  yCol: number;
  /** y += result instead of y = result. */
  accumulate?: boolean;
}

export type CodebookForm = "matvec" | "lut" | "tile";

/** Most input rows one dispatch walks (Mesa ends a shader after 65,535 loop iterations). */
export const MAX_ROWS_PER_DISPATCH = 60_000;
/** Most tokens one matvec or lut dispatch holds per invocation; more are cut into chunks. */
export const FEW_TOKENS = 8;
/**
 * Largest lut table per invocation, 2^bits * (tokens per invocation) sums: 8 invocations' tables
 * fill 32 KiB of workgroup memory.
 */
const LUT_MAX_ENTRIES = 1024;

const ceilDiv = (a: number, b: number) => Math.ceil(a / b);

/** Tokens per invocation for a chunk of `n` tokens: 1, 2, 4 or 8. */
export function tokenSlots(n: number): number {
  return n <= 1 ? 1 : n <= 2 ? 2 : n <= 4 ? 4 : 8;
}

/** Centroid components per load: 4 when d % 4 == 0, 2 when d is even, else 1. */
function vecWidth(d: number): number {
  return d % 4 === 0 ? 4 : d % 2 === 0 ? 2 : 1;
}

/**
 * Code columns per invocation of the matvec form: G <= 16, G * d <= 64 outputs and G * d * NT <=
 * 512 accumulators, but enough invocations for MIN_GROUPS workgroups. Measured at 4096 x 4096
 * (ms, G = 4 / 8 / 16 / 32): d=4 N=1 10.2 / 8.1 / 8.3 / 7.4, d=4 N=8 13.8 / 13.4 / 12.4 / 15.8,
 * d=8 N=1 6.8 / 6.4 / 7.4 / 8.6, d=8 N=8 9.6 / 9.6 / 14.9 / 13.9, d=2 N=8 20.4 / 17.1 / 16.2 /
 * 17.4: more columns amortise the code words and inputs until the accumulators spill.
 */
function matvecColumns(d: number, nt: number, cols: number): number {
  const g = Math.min(
    16,
    Math.floor(64 / d),
    Math.floor(512 / (d * nt)),
    Math.floor(cols / (8 * MIN_GROUPS)),
  );
  return Math.max(1, g);
}

/** Workgroups a kernel should have at least, when the shape allows, to keep all cores busy. */
export const MIN_GROUPS = 4;

/**
 * Whether x^T may be read as vec4 quads of `width` tokens from element `off` over `rows` rows:
 * aligned, and every quad inside the buffer's whole vec4s.
 */
export function xQuads(io: LinearIO, off: number, rows: number, width: number): boolean {
  return off % 4 === 0 && (rows === 1 || io.ldx % 4 === 0) &&
    off + (rows - 1) * io.ldx + width <= Math.floor(io.x.size / 16) * 4;
}

/** Code columns and token quads per invocation of the tile form (about 512 accumulators). */
function tileShape(d: number): { G: number; TQ: number } {
  const G = Math.max(1, Math.floor(32 / d));
  const outs = G * d;
  return { G, TQ: outs <= 32 ? 4 : outs <= 64 ? 2 : 1 };
}

/**
 * Lanes along the tokens (1, 2, 4 or 8) that pad the least; ties to fewer along the tokens (at
 * 4096 x 4096, N = 512, d = 8: 1 lane 599 ms, 2 777, 4 1180, 8 787: lanes along the outputs
 * share the inputs, and their code reads are neighbours).
 */
function tileLanes(N: number, cols: number, G: number, tn: number): number {
  let best = 1, bestArea = Infinity;
  for (const ln of [1, 2, 4, 8]) {
    const area = ceilDiv(N, ln * tn) * ln * tn * ceilDiv(cols, (8 / ln) * G) * (8 / ln) * G;
    if (area < bestArea) {
      best = ln;
      bestArea = area;
    }
  }
  return best;
}

function isCount(v: unknown, min: number): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= min;
}

/** Checks a layer's fields and buffers; returns cols = ceil(out / d). */
function checkLayer(gpu: Gpu, layer: CodebookLayer): number {
  const what = "codebookLinear";
  for (const k of ["in", "out", "d", "n", "splits", "bits"] as const) {
    if (!isCount(layer[k], 1)) {
      throw new Error(`${what}: layer.${k} = ${layer[k]} must be a positive integer`);
    }
  }
  const { in: inDim, out, d, n, splits, bits } = layer;
  if (d > 64) throw new Error(`${what}: d = ${d} is larger than 64`);
  if (n > 65536) throw new Error(`${what}: n = ${n} is larger than 65,536`);
  if (bits !== codeBits(n)) {
    throw new Error(`${what}: bits = ${bits} but a codebook of ${n} entries has ${codeBits(n)}`);
  }
  if (inDim % splits !== 0) {
    throw new Error(`${what}: splits = ${splits} does not divide in = ${inDim}`);
  }
  const cols = ceilDiv(out, d);
  if ((inDim * cols + 1024) * bits >= 2 ** 32) {
    throw new Error(`${what}: ${inDim * cols} codes of ${bits} bits exceed u32 bit addresses`);
  }
  const needCodes = packedWords(inDim * cols, bits) * 4;
  if (layer.codes.size < needCodes) {
    throw new Error(
      `${what}: codes buffer (${layer.codes.label}) has ${layer.codes.size} bytes, ` +
        `[${inDim}, ${cols}] codes of ${bits} bits need ${needCodes}`,
    );
  }
  const needC = splits * n * d * 4;
  if (layer.centroids.size < needC) {
    throw new Error(
      `${what}: centroids buffer (${layer.centroids.label}) has ${layer.centroids.size} bytes, ` +
        `[${splits * n}, ${d}] f32 need ${needC}`,
    );
  }
  bindWhole(gpu, what, "codes", layer.codes);
  bindWhole(gpu, what, "centroids", layer.centroids);
  return cols;
}

/** Throws unless `buf` fits one storage binding (it is bound whole). */
function bindWhole(gpu: Gpu, kernel: string, name: string, buf: GPUBuffer): void {
  if (buf.size > gpu.limits.maxBinding) {
    throw new Error(
      `${kernel}: ${name} buffer (${buf.label}) has ${buf.size} bytes, more than the ` +
        `${gpu.limits.maxBinding}-byte storage binding limit; it is bound whole`,
    );
  }
}

/** The resolved offsets of io after checking it against [inDim, out]; throws on misuse. */
export function checkIO(
  gpu: Gpu,
  kernel: string,
  inDim: number,
  out: number,
  io: LinearIO,
): { xOff: number; yOff: number } {
  const xOff = io.xOffset ?? 0, yOff = io.yOffset ?? 0;
  if (!isCount(io.N, 1)) throw new Error(`${kernel}: N = ${io.N} must be a positive integer`);
  for (const [k, v] of [["ldx", io.ldx], ["yRow", io.yRow], ["yCol", io.yCol]] as const) {
    if (!isCount(v, 0)) throw new Error(`${kernel}: ${k} = ${v} must be a non-negative integer`);
  }
  if (!isCount(xOff, 0) || !isCount(yOff, 0)) {
    throw new Error(`${kernel}: offsets ${xOff}, ${yOff} must be non-negative integers`);
  }
  if (io.x === io.y) {
    throw new Error(`${kernel}: x and y (${io.x.label}) must be different buffers`);
  }
  const { N } = io;
  // Distinct outputs: one stride spans the other's whole extent.
  const distinct = (out === 1 || io.yRow >= 1) && (N === 1 || io.yCol >= 1) &&
    (io.yRow >= io.yCol * N || io.yCol >= io.yRow * out || out === 1 || N === 1);
  if (!distinct) {
    throw new Error(
      `${kernel}: output strides yRow = ${io.yRow}, yCol = ${io.yCol} overlap for [${out}, ${N}]`,
    );
  }
  const xEnd = xOff + (inDim - 1) * io.ldx + N;
  if (xEnd * 4 > io.x.size) {
    throw new Error(
      `${kernel}: x (${io.x.label}) has ${io.x.size} bytes, [${inDim}, ${N}] with ldx ` +
        `${io.ldx} at offset ${xOff} needs ${xEnd * 4}`,
    );
  }
  const yEnd = yOff + (out - 1) * io.yRow + (N - 1) * io.yCol + 1;
  if (yEnd * 4 > io.y.size) {
    throw new Error(
      `${kernel}: y (${io.y.label}) has ${io.y.size} bytes, [${out}, ${N}] with strides ` +
        `(${io.yRow}, ${io.yCol}) at offset ${yOff} needs ${yEnd * 4}`,
    );
  }
  bindWhole(gpu, kernel, "x", io.x);
  bindWhole(gpu, kernel, "y", io.y);
  return { xOff, yOff };
}

/** How the lut form runs a layer at a chunk of nt tokens. */
interface LutPlan {
  /** Code columns per invocation. */
  G: number;
  /** Sums in registers (a tiny codebook) instead of workgroup memory. */
  reg: boolean;
  /** Codebook entries with a sum: n in registers, 2^bits in the table. */
  entries: number;
  /** Floats of workgroup memory per invocation: the table, or the store stash. */
  lcap: number;
}

/**
 * The lut form's plan, or null when even one column's table does not fit LUT_MAX_ENTRIES. In
 * registers when n * NT <= 32 (every entry's sum costs a select and an add per row); else a
 * table of 2^bits * NT sums per column in workgroup memory. Columns per invocation G amortise the
 * code words and inputs of a row.
 */
function lutPlan(layer: CodebookLayer, nt: number, cols: number): LutPlan | null {
  const { n, d, bits } = layer;
  const spread = Math.max(1, Math.floor(cols / (8 * MIN_GROUPS)));
  if (n * nt <= 32 && n * d * nt <= 512) {
    const G = Math.max(
      1,
      Math.min(16, Math.floor(64 / (n * nt)), Math.floor(1024 / (n * d * nt)), spread),
    );
    return { G, reg: true, entries: n, lcap: G * d * nt };
  }
  const kt = 2 ** bits;
  if (Math.max(kt, d) * nt > LUT_MAX_ENTRIES) return null;
  const G = Math.max(1, Math.min(8, Math.floor(LUT_MAX_ENTRIES / (Math.max(kt, d) * nt)), spread));
  return { G, reg: false, entries: kt, lcap: G * Math.max(kt, d) * nt };
}

/** Forms that can run this layer at N tokens. */
export function formsFor(layer: CodebookLayer, N: number): CodebookForm[] {
  const forms: CodebookForm[] = ["matvec", "tile"];
  const nt = tokenSlots(Math.min(N, FEW_TOKENS));
  if (lutPlan(layer, nt, Math.ceil(layer.out / layer.d))) forms.push("lut");
  return forms;
}

/**
 * How the matvec and tile forms read centroids: straight from the codebook (P = 1, DP = d), or
 * from a table built per call in which one entry is the centroids of P neighbouring codes
 * (P * bits bits of the stream read as one "super-code") padded to DP floats, DP a multiple of 4,
 * so that an entry is DP / 4 vec4 loads. Per-lane loads are what this driver pays for (a vec4
 * costs about what a scalar does), and d = 2 reads one vec2 per 2 weights, d = 3 three scalars
 * per 3 weights, where W^T's own rows give one vec4 per 4.
 */
export interface WidePlan {
  /** Codes per table entry. */
  P: number;
  /** Floats per table entry (P * d, padded). */
  DP: number;
  /** Entries per split: 2^(P * bits) with a table of super-codes, n otherwise. */
  entries: number;
  /** Whether a table is built (false: the codebook is read as it is). */
  table: boolean;
}

/** Most floats of a per-call widened table. */
const WIDE_MAX_FLOATS = 1 << 22;

function widePlan(layer: CodebookLayer, maxBinding = Infinity): WidePlan {
  const { d, bits, n, splits } = layer;
  const plain = { P: 1, DP: d, entries: n, table: false };
  let P = 1, DP = d;
  if (d % 4 === 0) return plain;
  if (d === 2 && bits <= 6) [P, DP] = [2, 4];
  else if (d === 1 && bits <= 3) [P, DP] = [4, 4];
  else if (d === 1 && bits <= 6) [P, DP] = [2, 2];
  else if (d >= 3) DP = Math.ceil(d / 4) * 4;
  else return plain;
  const entries = P > 1 ? 2 ** (P * bits) : n;
  const floats = splits * entries * DP;
  if (floats > WIDE_MAX_FLOATS || floats * 4 > maxBinding) return plain;
  return { P, DP, entries, table: true };
}

const scratch = new WeakMap<Gpu, GPUBuffer>();

/** A buffer of at least `bytes` kept per Gpu for the widened tables (grown when needed). */
function scratchBuffer(gpu: Gpu, bytes: number): GPUBuffer {
  let b = scratch.get(gpu);
  if (!b || b.size < bytes) {
    if (b) gpu.releaseBuffer(b);
    b = gpu.createBuffer(Math.max(bytes, 1 << 16), "codebookLinear widened centroids");
    scratch.set(gpu, b);
  }
  return b;
}

/** y (+)= x W for a codebook layer; `form` defaults to chooseForm's pick. */
export function codebookLinear(
  gpu: Gpu,
  layer: CodebookLayer,
  io: LinearIO,
  form?: CodebookForm,
): void {
  const cols = checkLayer(gpu, layer);
  const { xOff, yOff } = checkIO(gpu, "codebookLinear", layer.in, layer.out, io);
  const f = form ?? chooseForm(layer, io.N);
  const { d, bits } = layer;
  const maxWg = gpu.limits.maxWorkgroups;
  const splitRows = layer.in / layer.splits;
  // Template variables common to the forms (lut reads the codebook as it is).
  const wide = f === "lut"
    ? { P: 1, DP: d, entries: layer.n, table: false }
    : widePlan(layer, gpu.limits.maxBinding);
  const { P, DP, entries } = wide;
  const vw = vecWidth(DP);
  const base: WgslVars = {
    FORM: f === "matvec" ? 1 : f === "lut" ? 2 : 3,
    P,
    BS: bits,
    B: P * bits,
    MASK: 2 ** (P * bits) - 1,
    SMASK: 2 ** bits - 1,
    D: P * d,
    DP,
    VW: vw,
    CT: vw === 1 ? "f32" : `vec${vw}<f32>`,
    XV: 0,
    XT: "f32",
    G: 1,
    NT: 1,
    TQ: 1,
    LCAP: 8,
    LREG: 0,
    KN: 1,
    KT: 1,
    WN: 1,
    WT: 3,
  };
  const words = (G: number) => ({
    WN: Math.floor((30 + G * P * bits) / 32) + 1,
    WT: Math.floor(((G - 1) * P * bits) / 32) + 3,
  });
  const params = (
    row0: number,
    rows: number,
    n: number,
    xo: number,
    yo: number,
    acc: boolean,
    gx: number,
    ln: number,
  ) =>
    new Uint32Array([
      row0,
      rows,
      cols,
      layer.out,
      n,
      io.ldx,
      xo,
      yo,
      io.yRow,
      io.yCol,
      acc ? 1 : 0,
      splitRows,
      entries,
      gx,
      ln,
      Math.floor(row0 / splitRows) * entries,
    ]);
  let table = layer.centroids;
  if (wide.table) {
    // The widened table, built per call (the centroids may change between calls).
    const total = layer.splits * wide.entries;
    table = scratchBuffer(gpu, total * wide.DP * 4);
    const m = templateModule("codebook_linear", code, { ...base, FORM: 4 });
    const [gx, gy] = grid(ceilDiv(total * wide.DP, 64), maxWg);
    const p = new Uint32Array(16);
    p[1] = total;
    p[2] = wide.entries;
    p[12] = layer.n;
    p[13] = gx;
    gpu.dispatch(gpu.pipeline(m.name, m.code, "widen"), [
      p,
      null,
      null,
      null,
      null,
      { buffer: layer.centroids },
      { buffer: table },
    ], [gx, gy]);
  }
  const bind = (p: Uint32Array) => [
    p,
    { buffer: layer.codes },
    { buffer: table },
    { buffer: io.x },
    { buffer: io.y },
  ];
  // Columns of (super-)codes: P codes each.
  const scols = ceilDiv(cols, P);

  if (f === "tile") {
    const { G, TQ } = tileShape(P * d);
    const tn = 4 * TQ;
    const xv = xQuads(io, xOff, layer.in, Math.ceil(io.N / 4) * 4);
    const m = templateModule("codebook_linear", code, {
      ...base,
      ...words(G),
      G,
      TQ,
      XV: xv ? 1 : 0,
      XT: xv ? "vec4<f32>" : "f32",
    });
    const pipe = gpu.pipeline(m.name, m.code, "tile");
    const ln = tileLanes(io.N, scols, G, tn);
    const gy = ceilDiv(scols, (8 / ln) * G);
    if (gy > maxWg) {
      throw new Error(`codebookLinear: ${cols} code columns need ${gy} workgroups along y`);
    }
    const perChunk = maxWg * ln * tn;
    for (let t0 = 0; t0 < io.N; t0 += perChunk) {
      const nc = Math.min(perChunk, io.N - t0);
      const gx = ceilDiv(nc, ln * tn);
      for (let r0 = 0; r0 < layer.in; r0 += MAX_ROWS_PER_DISPATCH) {
        const rows = Math.min(MAX_ROWS_PER_DISPATCH, layer.in - r0);
        const acc = !!io.accumulate || r0 > 0;
        const p = params(r0, rows, nc, xOff + t0, yOff + t0 * io.yCol, acc, gx, ln);
        gpu.dispatch(pipe, bind(p), [gx, gy]);
      }
    }
    return;
  }

  // matvec and lut: chunks of at most FEW_TOKENS tokens.
  for (let t0 = 0; t0 < io.N; t0 += FEW_TOKENS) {
    const nc = Math.min(FEW_TOKENS, io.N - t0);
    const nt = tokenSlots(nc);
    const xo = xOff + t0, yo = yOff + t0 * io.yCol;
    if (f === "matvec") {
      const G = matvecColumns(P * d, nt, scols);
      const xv = nt % 4 === 0 && xQuads(io, xo, layer.in, nt);
      const m = templateModule("codebook_linear", code, {
        ...base,
        ...words(G),
        G,
        NT: nt,
        XV: xv ? 1 : 0,
        XT: xv ? "vec4<f32>" : "f32",
      });
      const pipe = gpu.pipeline(m.name, m.code, "matvec");
      const [gx, gy] = grid(ceilDiv(ceilDiv(scols, G), 8), maxWg);
      for (let r0 = 0; r0 < layer.in; r0 += MAX_ROWS_PER_DISPATCH) {
        const rows = Math.min(MAX_ROWS_PER_DISPATCH, layer.in - r0);
        const p = params(r0, rows, nc, xo, yo, !!io.accumulate || r0 > 0, gx, 0);
        gpu.dispatch(pipe, bind(p), [gx, gy]);
      }
    } else {
      const plan = lutPlan(layer, nt, cols);
      if (!plan || plan.lcap * 32 > gpu.limits.maxWorkgroupStorage) {
        throw new Error(
          `codebookLinear: the lut form's table (n = ${layer.n}, d = ${d}, N = ${io.N}) ` +
            `exceeds ${LUT_MAX_ENTRIES} sums per invocation or the workgroup memory`,
        );
      }
      const m = templateModule("codebook_linear", code, {
        ...base,
        ...words(plan.G),
        G: plan.G,
        NT: nt,
        LREG: plan.reg ? 1 : 0,
        KN: plan.reg ? plan.entries : 1,
        KT: plan.reg ? 1 : plan.entries,
        LCAP: plan.lcap,
      });
      const pipe = gpu.pipeline(m.name, m.code, "lut");
      const [gx, gy] = grid(ceilDiv(ceilDiv(cols, plan.G), 8), maxWg);
      // Dispatches walk rows of one split each, at most MAX_ROWS_PER_DISPATCH - n of them (the
      // product loop runs n times; the store loop G * d * NT <= 1024 more).
      const step = MAX_ROWS_PER_DISPATCH - layer.n;
      let first = true;
      for (let s0 = 0; s0 < layer.in; s0 += splitRows) {
        for (let r0 = s0; r0 < s0 + splitRows; r0 += step) {
          const rows = Math.min(step, s0 + splitRows - r0);
          const p = params(r0, rows, nc, xo, yo, !!io.accumulate || !first, gx, 0);
          gpu.dispatch(pipe, bind(p), [gx, gy]);
          first = false;
        }
      }
    }
  }
}

/**
 * The fastest form for this shape on this driver, from the bench (src/bench/codebook_linear.ts,
 * 4096 x 4096 on llvmpipe, 2 cores; ms per call):
 * - N > 8: tile. Its 16-token blocks beat token chunks of matvec from N = 12 on at every (d, n)
 *   measured (N = 12: tile 18.5 vs matvec 25.1 at d=4 n=256, 14.2 vs 18.8 at d=8 n=4096, 22.8 vs
 *   33.1 at d=2 n=16), while at N = 8 matvec wins (13.5 vs 18.3, 10.6 vs 14.0, 18.6 vs 23.1).
 * - N <= 8, tiny codebooks: lut with its sums in registers when n * NT <= 4 d (NT = N rounded up
 *   to 1, 2, 4 or 8). Its cost grows as n * NT / d (about 1.6 ms per unit here: d=8 n=4 N=1 0.9,
 *   d=4 n=8 N=1 3.3, d=4 n=16 N=1 6.2, d=2 n=16 N=1 12.7, d=4 n=8 N=4 14.6) while matvec stays
 *   near 10 ms, so lut wins up to n * NT / d of about 5.
 * - otherwise matvec (6.5 to 11 ms at N = 1 for d = 1 .. 8, against 9.4 for denseMatvec; the
 *   table form of lut, n * NT > 32, never beat it: 14.5 vs 10.5 at d=4 n=256 N=1).
 */
export function chooseForm(layer: CodebookLayer, N: number): CodebookForm {
  if (N > FEW_TOKENS) return "tile";
  const nt = tokenSlots(N);
  const lut = lutPlan(layer, nt, Math.ceil(layer.out / layer.d));
  return lut?.reg && layer.n * nt <= 4 * layer.d ? "lut" : "matvec";
}
