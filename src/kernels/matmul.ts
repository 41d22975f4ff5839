// The one general f32 matmul: C[M, N] (=|+=) sum_k At[k, m] * B[k, n], At stored [K, M].
// Plans dispatches around the device's limits: K is split so that no invocation loops more
// than MATMUL_MAX_K times (Mesa ends shader loops after 65,535 iterations), and buffers past
// maxStorageBufferBindingSize are bound as aligned byte ranges, splitting K (rows of At and B)
// and M (rows of C), and batches when needed. See shaders/matmul.wgsl for the tiling.
import code from "../../shaders/matmul.wgsl" with { type: "text" };
import type { BufferRange, Gpu } from "../gpu/device.ts";
import type { Tensor } from "../gpu/tensor.ts";

export interface MatmulArgs {
  M: number;
  N: number;
  K: number;
  /** At: element (k, m) at aOffset + k*lda + m (elements). */
  a: GPUBuffer;
  aOffset?: number;
  lda: number;
  /** B: element (k, n) at bOffset + k*ldb + n. */
  b: GPUBuffer;
  bOffset?: number;
  ldb: number;
  /** C: element (m, n) at cOffset + m*ldc + n. Must not overlap At or B. */
  c: GPUBuffer;
  cOffset?: number;
  ldc: number;
  /** Number of matmuls, default 1 (dispatched over workgroup z). */
  batch?: number;
  /** Elements between consecutive batches, default 0. */
  aBatchStride?: number;
  bBatchStride?: number;
  cBatchStride?: number;
  /** Batch i uses A batch floor(i / aBatchDiv) (grouped-query attention), default 1. */
  aBatchDiv?: number;
  bBatchDiv?: number;
  /** C += result instead of C = result. */
  accumulate?: boolean;
}

/** Rows and columns of C per invocation; must match TM and TN in shaders/matmul.wgsl. */
export const MATMUL_TM = 32;
export const MATMUL_TN = 16;
/** Most k steps one dispatch runs (one loop iteration per k step and invocation). */
export const MATMUL_MAX_K = 32768;
/**
 * k steps per dispatch when At and B together exceed CACHE_BYTES: each workgroup then streams
 * panels that stay in cache, which was worth ~1.3x at M=2048 N=4096 K=4096 despite the extra
 * accumulate pass over C per chunk.
 */
const K_BLOCK = 512;
const CACHE_BYTES = 8 << 20;

const INVOCATIONS = 8; // @workgroup_size(8): one SIMD group on llvmpipe
const MAX_GROUPS = 65535;

/** How one call is cut into dispatches, exposed for tests and planning. */
export interface MatmulPlan {
  /** Invocations along n per workgroup (1, 2, 4 or 8). */
  ln: number;
  vecA: boolean;
  vecB: boolean;
  vecC: boolean;
  /** Batches, rows of C and k steps per dispatch. */
  zc: number;
  mc: number;
  kc: number;
  dispatches: number;
}

interface Resolved {
  M: number;
  N: number;
  K: number;
  lda: number;
  ldb: number;
  ldc: number;
  aOff: number;
  bOff: number;
  cOff: number;
  batch: number;
  aBS: number;
  bBS: number;
  cBS: number;
  aDiv: number;
  bDiv: number;
  accumulate: boolean;
}

function resolve(args: MatmulArgs): Resolved {
  const r: Resolved = {
    M: args.M,
    N: args.N,
    K: args.K,
    lda: args.lda,
    ldb: args.ldb,
    ldc: args.ldc,
    aOff: args.aOffset ?? 0,
    bOff: args.bOffset ?? 0,
    cOff: args.cOffset ?? 0,
    batch: args.batch ?? 1,
    aBS: args.aBatchStride ?? 0,
    bBS: args.bBatchStride ?? 0,
    cBS: args.cBatchStride ?? 0,
    aDiv: args.aBatchDiv ?? 1,
    bDiv: args.bBatchDiv ?? 1,
    accumulate: args.accumulate ?? false,
  };
  for (const [name, v] of Object.entries(r)) {
    if (typeof v === "number" && (!Number.isInteger(v) || v < 0)) {
      throw new Error(`matmul: ${name} must be a non-negative integer, got ${v}`);
    }
  }
  if (args.c === args.a || args.c === args.b) {
    throw new Error(`matmul: C (${args.c.label}) must not share a buffer with At or B`);
  }
  if (r.aDiv < 1 || r.bDiv < 1) {
    throw new Error(`matmul: aBatchDiv and bBatchDiv must be >= 1, got ${r.aDiv}, ${r.bDiv}`);
  }
  if (r.M > 1 && r.ldc < r.N) {
    throw new Error(`matmul: ldc ${r.ldc} < N ${r.N} makes rows of C overlap`);
  }
  if (r.batch > 1 && r.cBS > 0 && r.cBS < (r.M - 1) * r.ldc + r.N) {
    throw new Error(`matmul: cBatchStride ${r.cBS} makes batches of C overlap`);
  }
  return r;
}

/** One past the last element an operand touches over all batches (0 when it is not read). */
function extent(
  off: number,
  ld: number,
  rows: number,
  cols: number,
  bs: number,
  batches: number,
): number {
  if (rows === 0 || cols === 0 || batches === 0) return off;
  return off + (batches - 1) * bs + (rows - 1) * ld + cols;
}

const ceilDiv = (a: number, b: number) => Math.ceil(a / b);
const roundUp4 = (x: number) => Math.ceil(x / 4) * 4;

/**
 * Invocations along n that waste the least padding for this shape; ties go to the first listed
 * (8 along n measured ~8% faster than 4 x 2 at 1024^3).
 */
function pickLn(M: number, N: number): number {
  let best = 8, bestArea = Infinity;
  for (const ln of [8, 4, 2, 1]) {
    const tm = (INVOCATIONS / ln) * MATMUL_TM, tn = ln * MATMUL_TN;
    const area = ceilDiv(M, tm) * tm * ceilDiv(N, tn) * tn;
    if (area < bestArea) {
      best = ln;
      bestArea = area;
    }
  }
  return best;
}

/** Works out vec4 eligibility and the chunking of one call; throws if it cannot be done. */
export function planMatmul(gpu: Gpu, args: MatmulArgs): MatmulPlan {
  return plan(gpu, args, resolve(args));
}

function plan(gpu: Gpu, args: MatmulArgs, r: Resolved): MatmulPlan {
  const { M, N, K, batch } = r;
  const nA = Math.floor((batch - 1) / r.aDiv) + 1, nB = Math.floor((batch - 1) / r.bDiv) + 1;
  // Bounds: every element the reference would touch must lie inside its buffer.
  const ends: [string, GPUBuffer, number][] = [
    ["a", args.a, extent(r.aOff, r.lda, K, M, r.aBS, nA)],
    ["b", args.b, extent(r.bOff, r.ldb, K, N, r.bBS, nB)],
    ["c", args.c, extent(r.cOff, r.ldc, M, N, r.cBS, batch)],
  ];
  for (const [name, buf, end] of ends) {
    if (end * 4 > buf.size) {
      throw new Error(
        `matmul: operand ${name} (${buf.label}) needs ${end * 4} bytes but its buffer has ` +
          `${buf.size} (M=${M} N=${N} K=${K} batch=${batch})`,
      );
    }
  }
  // vec4 rows: aligned offsets and strides, and the last vec4 of the last row inside the buffer.
  const vecA = r.aOff % 4 === 0 && (K <= 1 || r.lda % 4 === 0) && (nA <= 1 || r.aBS % 4 === 0) &&
    extent(r.aOff, r.lda, K, roundUp4(M), r.aBS, nA) * 4 <= args.a.size;
  const vecB = r.bOff % 4 === 0 && (K <= 1 || r.ldb % 4 === 0) && (nB <= 1 || r.bBS % 4 === 0) &&
    extent(r.bOff, r.ldb, K, roundUp4(N), r.bBS, nB) * 4 <= args.b.size;
  // N % 4 === 0: put() then never takes its scalar stores, so C needs only the vec4 binding.
  const vecC = r.cOff % 4 === 0 && (M <= 1 || r.ldc % 4 === 0) && (batch <= 1 || r.cBS % 4 === 0) &&
    N % 4 === 0;

  const ln = pickLn(M, N);
  const tileM = (INVOCATIONS / ln) * MATMUL_TM;
  if (ceilDiv(N, ln * MATMUL_TN) > MAX_GROUPS) {
    throw new Error(`matmul: N=${N} needs more than ${MAX_GROUPS} workgroups along x`);
  }
  const { maxBinding, align } = gpu.limits;
  // Elements a bound range may span once its start is aligned down and its end rounded up.
  const cap = Math.floor((maxBinding - align - 16) / 4);
  const bigA = args.a.size > maxBinding, bigB = args.b.size > maxBinding;
  const bigC = args.c.size > maxBinding;

  // Batches per dispatch: all of them unless a big operand's batches cannot share one range.
  let zc = Math.min(batch, MAX_GROUPS);
  // Most distinct operand batches n consecutive z can touch, minus one.
  const batchSpan = (n: number, div: number) =>
    Math.min(ceilDiv(n - 1, div) + 1, Math.floor((batch - 1) / div) + 1) - 1;
  const fitsBatches = (n: number) =>
    (!bigA || batchSpan(n, r.aDiv) * r.aBS + roundUp4(Math.min(M, tileM)) <= cap) &&
    (!bigB || batchSpan(n, r.bDiv) * r.bBS + roundUp4(N) <= cap) &&
    (!bigC || (n - 1) * r.cBS + Math.min(M, tileM) * r.ldc <= cap);
  if (zc > 1 && !fitsBatches(zc)) zc = 1;
  const spanA = bigA ? batchSpan(zc, r.aDiv) * r.aBS : 0;
  const spanB = bigB ? batchSpan(zc, r.bDiv) * r.bBS : 0;
  const spanC = bigC ? (zc - 1) * r.cBS : 0;

  // Rows of C per dispatch: the grid limit, and the binding limit on C.
  let mc = Math.min(M, MAX_GROUPS * tileM);
  if (bigC && spanC + (mc - 1) * r.ldc + N > cap) {
    mc = Math.floor((cap - spanC - N) / Math.max(r.ldc, 1)) + 1;
  }
  // Chunks start on a row that keeps At's vec4 alignment, on a workgroup row where possible.
  if (mc < M) mc = mc >= tileM ? Math.floor(mc / tileM) * tileM : Math.floor(mc / 4) * 4;
  // k steps per dispatch: the loop cap, and the binding limit on At and B.
  let kc = Math.min(K, MATMUL_MAX_K);
  if (K > 2 * K_BLOCK && K * (M + N) * 4 > CACHE_BYTES) {
    kc = Math.ceil(K / Math.ceil(K / K_BLOCK));
  }
  if (bigA && spanA + (kc - 1) * r.lda + roundUp4(Math.max(mc, 1)) > cap) {
    kc = Math.floor((cap - spanA - roundUp4(Math.max(mc, 1))) / Math.max(r.lda, 1)) + 1;
  }
  if (bigB && spanB + (kc - 1) * r.ldb + roundUp4(N) > cap) {
    kc = Math.min(kc, Math.floor((cap - spanB - roundUp4(N)) / Math.max(r.ldb, 1)) + 1);
  }
  if ((M > 0 && mc < 1) || (K > 0 && kc < 1)) {
    throw new Error(
      `matmul: cannot bind one row of an operand within ${maxBinding} bytes ` +
        `(M=${M} N=${N} K=${K} lda=${r.lda} ldb=${r.ldb} ldc=${r.ldc})`,
    );
  }
  const kChunks = K === 0 ? (r.accumulate ? 0 : 1) : ceilDiv(K, kc);
  const dispatches = M === 0 || N === 0 || batch === 0
    ? 0
    : ceilDiv(batch, zc) * ceilDiv(M, mc) * kChunks;
  return { ln, vecA, vecB, vecC, zc, mc, kc: Math.max(kc, 1), dispatches };
}

/** Cache budget for the At panels of one group of tile rows (see main() in the shader). */
const GROUP_BYTES = 4 << 20;

/** Tile rows per group: as many At panels (k steps x tile rows) as fit GROUP_BYTES. */
function groupM(k: number, tileM: number): number {
  return Math.max(1, Math.min(MAX_GROUPS, Math.floor(GROUP_BYTES / (Math.max(k, 1) * tileM * 4))));
}

/** A binding for elements [lo, hi) of buf and the element index its start has. */
function bindRange(gpu: Gpu, buf: GPUBuffer, lo: number, hi: number) {
  const { maxBinding, align } = gpu.limits;
  if (buf.size <= maxBinding) return { range: { buffer: buf } as BufferRange, base: 0 };
  let start = Math.floor((lo * 4) / align) * align;
  const end = Math.min(buf.size, Math.max(Math.ceil((hi * 4) / 16) * 16, start + 16));
  if (end - start < 16) start = Math.max(0, start - align);
  if (end - start > maxBinding) {
    throw new Error(`matmul: internal error, range of ${end - start} bytes of ${buf.label}`);
  }
  return { range: { buffer: buf, offset: start, size: end - start }, base: start / 4 };
}

/** C[M, N] (=|+=) sum_k At[k, m] * B[k, n] for each batch; see MatmulArgs. Records dispatches. */
export function matmul(gpu: Gpu, args: MatmulArgs): void {
  const r = resolve(args);
  const pl = plan(gpu, args, r);
  if (pl.dispatches === 0) return;
  const { M, N, K, batch } = r;
  const tileM = (INVOCATIONS / pl.ln) * MATMUL_TM;
  const gx = ceilDiv(N, pl.ln * MATMUL_TN);
  const pipe = gpu.pipeline("matmul", code, "main", {
    VEC_A: pl.vecA ? 1 : 0,
    VEC_B: pl.vecB ? 1 : 0,
    VEC_C: pl.vecC ? 1 : 0,
  });
  for (let z0 = 0; z0 < batch; z0 += pl.zc) {
    const zn = Math.min(pl.zc, batch - z0);
    const aB0 = Math.floor(z0 / r.aDiv), aB1 = Math.floor((z0 + zn - 1) / r.aDiv);
    const bB0 = Math.floor(z0 / r.bDiv), bB1 = Math.floor((z0 + zn - 1) / r.bDiv);
    for (let m0 = 0; m0 < M; m0 += pl.mc) {
      const mn = Math.min(pl.mc, M - m0);
      const cLo = r.cOff + z0 * r.cBS + m0 * r.ldc;
      const c = bindRange(gpu, args.c, cLo, cLo + (zn - 1) * r.cBS + (mn - 1) * r.ldc + N);
      for (let k0 = 0; k0 === 0 || k0 < K; k0 += pl.kc) {
        const kn = Math.min(pl.kc, K - k0);
        const accumulate = r.accumulate || k0 > 0;
        if (kn === 0 && accumulate) break;
        const kl = Math.max(kn, 1) - 1;
        const aLo = r.aOff + aB0 * r.aBS + k0 * r.lda + m0;
        const a = bindRange(gpu, args.a, aLo, aLo + (aB1 - aB0) * r.aBS + kl * r.lda + mn);
        const bLo = r.bOff + bB0 * r.bBS + k0 * r.ldb;
        const b = bindRange(gpu, args.b, bLo, bLo + (bB1 - bB0) * r.bBS + kl * r.ldb + N);
        const params = new Uint32Array([
          mn,
          N,
          kn,
          r.lda,
          r.ldb,
          r.ldc,
          aLo - a.base,
          bLo - b.base,
          cLo - c.base,
          r.aBS,
          r.bBS,
          r.cBS,
          r.aDiv,
          r.bDiv,
          z0,
          pl.ln,
          accumulate ? 1 : 0,
          groupM(kn, tileM),
        ]);
        // C at binding 6 (vec4) with VEC_C, else at binding 3, never both: browsers (Dawn)
        // reject two writable bindings of one range; the unused slot gets a spare buffer.
        const cS = pl.vecC ? spareC(gpu) : c.range, cV = pl.vecC ? c.range : spareC(gpu);
        const bindings = [params, a.range, b.range, cS, a.range, b.range, cV];
        gpu.dispatch(pipe, bindings, [gx, ceilDiv(mn, tileM), zn]);
      }
    }
  }
}

const spares = new WeakMap<Gpu, BufferRange>();

/** A 16-byte storage buffer for the C slot a variant never touches (one per Gpu, kept). */
function spareC(gpu: Gpu): BufferRange {
  let r = spares.get(gpu);
  if (!r) {
    const usage = GPUBufferUsage.STORAGE;
    r = { buffer: gpu.device.createBuffer({ size: 16, usage, label: "matmul spare C" }) };
    spares.set(gpu, r);
  }
  return r;
}

function expectShape(t: Tensor, rank: number, what: string): void {
  if (t.shape.length !== rank || t.dtype !== "f32") {
    throw new Error(`${what}: expected an f32 tensor of rank ${rank}, got ${t.dtype} [${t.shape}]`);
  }
}

/**
 * Feature-major linear layer: yT[out, T] (=|+=) W xT, with the weight stored transposed
 * wT[in, out] and activations xT[in, T].
 */
export function linearFeature(
  gpu: Gpu,
  wT: Tensor,
  xT: Tensor,
  yT: Tensor,
  accumulate = false,
): void {
  expectShape(wT, 2, "linearFeature wT");
  expectShape(xT, 2, "linearFeature xT");
  expectShape(yT, 2, "linearFeature yT");
  const [inF, outF] = wT.shape, T = xT.shape[1];
  if (xT.shape[0] !== inF || yT.shape[0] !== outF || yT.shape[1] !== T) {
    throw new Error(
      `linearFeature: shapes wT [${wT.shape}], xT [${xT.shape}], yT [${yT.shape}] do not match ` +
        `[in, out], [in, T], [out, T]`,
    );
  }
  matmul(gpu, {
    M: outF,
    N: T,
    K: inF,
    a: wT.buffer,
    lda: outF,
    b: xT.buffer,
    ldb: T,
    c: yT.buffer,
    ldc: T,
    accumulate,
  });
}

/** Token-major linear layer: y[T, out] = x W^T, from xT[in, T] and the weight as wT[in, out]. */
export function linearToken(gpu: Gpu, xT: Tensor, wT: Tensor, y: Tensor): void {
  expectShape(xT, 2, "linearToken xT");
  expectShape(wT, 2, "linearToken wT");
  expectShape(y, 2, "linearToken y");
  const [inF, T] = xT.shape, outF = wT.shape[1];
  if (wT.shape[0] !== inF || y.shape[0] !== T || y.shape[1] !== outF) {
    throw new Error(
      `linearToken: shapes xT [${xT.shape}], wT [${wT.shape}], y [${y.shape}] do not match ` +
        `[in, T], [in, out], [T, out]`,
    );
  }
  matmul(gpu, {
    M: T,
    N: outF,
    K: inF,
    a: xT.buffer,
    lda: T,
    b: wT.buffer,
    ldb: outF,
    c: y.buffer,
    ldc: outF,
  });
}
