// GPTQ (Frantar et al., 2023): per-group asymmetric quantization (the RTN quantizer of rtn.ts)
// with column-by-column error compensation through the inverse Hessian H = 2 X^T X / tokens of the
// layer's calibration inputs. Output: RTN's stored format (q [out, in], scales and zeros
// [out, groups]), so a GPTQ folder loads like an RTN one.
//
// Steps, as in the reference GPTQ code: dead inputs (H_ii = 0) get H_ii = 1 and a zero weight
// column; with act-order the columns are processed in descending diag(H) with "static groups"
// (each group's scale and zero from the original columns); 1% (damp) of mean(diag H) is added to
// the diagonal; U is the upper Cholesky factor of H^-1. Columns are then quantized in blocks of
// at most 128 ("lazy batches"): inside a block, on the host, column j's error err_j =
// (w_j - q_j) / U_jj updates the block's later columns by err_j U[j, j+1:]; after the block the
// rest of W takes the whole block's error at once, W[:, j2:] -= Err[:, j1:j2] U[j1:j2, j2:], a
// matmul on the GPU (src/kernels/matmul.ts) over W^T [in, out] kept there.
//
// Cost. The GPU matmuls sum to out * in^2 multiply-adds per matrix (Llama-2-70B down_proj,
// 8192 x 28672: 6.7e12). The host block loop is out * in * 64 (1.5e10 there, ~15 s in plain
// JS). The Hessian factorization (hessianFactor) is host float64, about (4/3) in^3 flops and
// 8 in^2 bytes once per block input (shared by q/k/v and by gate/up), measured at 0.6-1 GFLOP/s
// here (in = 1024: 1.4 s, 2048: 19 s): in = 8192 is 7.3e11 flops (~12-20 minutes) and 0.5 GiB;
// in = 28672 is 3.1e13 flops (~9-14 hours) and 6.6 GiB, per block. Fine for the fixtures and
// small models; at 70B (80 blocks) it wants a GPU or LAPACK Cholesky.
import { UserError } from "../errors.ts";
import type { Gpu } from "../gpu/device.ts";
import { matmul } from "../kernels/matmul.ts";
import type { RtnResult } from "./rtn.ts";

export interface GptqOptions {
  bits: number;
  group: number;
  actOrder: boolean;
  /** Added to H's diagonal, as a fraction of mean(diag H) (GPTQ's percdamp, default 0.01). */
  damp: number;
}

/** H's factor for GPTQ, shared by every matrix that reads the same inputs. */
export interface HessianFactor {
  inDim: number;
  /** Upper Cholesky factor of H^-1 (act-order permuted), [in, in] row-major, float64. */
  u: Float64Array;
  /** Processing order: position p quantizes original column perm[p] (identity without act-order). */
  perm: Uint32Array;
  /** Inputs with diag(H) = 0: their weight columns are zeroed. */
  dead: Uint8Array;
}

/** Most columns per lazy batch (GPTQ's blocksize). */
export const GPTQ_BLOCK = 128;

/**
 * Columns per lazy batch for a group size: groups computed as they go (no act-order) must start
 * at a block start or lie inside one block, so that the columns that set a group's scale have all
 * their updates when it is computed.
 */
export function gptqBlock(group: number, staticGroups: boolean): number {
  if (staticGroups) return GPTQ_BLOCK;
  if (group <= GPTQ_BLOCK) return Math.floor(GPTQ_BLOCK / group) * group;
  for (let b = GPTQ_BLOCK; b > 1; b--) if (group % b === 0) return b;
  return 1;
}

export function checkGptqOptions(o: GptqOptions): void {
  if (!Number.isInteger(o.bits) || o.bits < 1 || o.bits > 8) {
    throw new UserError(`gptq: --bits must be an integer from 1 to 8 (got ${o.bits})`);
  }
  if (!Number.isInteger(o.group) || o.group < 1) {
    throw new UserError(`gptq: --group must be >= 1 (got ${o.group})`);
  }
  if (!(o.damp >= 0) || !Number.isFinite(o.damp)) {
    throw new UserError(`gptq: --damp must be a number >= 0 (got ${o.damp})`);
  }
}

/**
 * The factor of H = 2 gram / tokens, gram = sum over tokens of x x^T ([in, in] row-major).
 * `what` names the inputs in errors.
 */
export function hessianFactor(
  gram: ArrayLike<number>,
  inDim: number,
  tokens: number,
  o: Pick<GptqOptions, "actOrder" | "damp">,
  what = "inputs",
): HessianFactor {
  if (gram.length !== inDim * inDim) {
    throw new Error(`gptq: ${what}: gram has ${gram.length} values, expected ${inDim}^2`);
  }
  if (!(tokens > 0)) throw new Error(`gptq: ${what}: no calibration tokens`);
  const n = inDim;
  const h = new Float64Array(n * n);
  for (let i = 0; i < n * n; i++) h[i] = (2 * gram[i]) / tokens;
  const dead = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    if (h[i * n + i] === 0) {
      dead[i] = 1;
      h[i * n + i] = 1;
    }
  }
  const perm = Uint32Array.from({ length: n }, (_, i) => i);
  if (o.actOrder) {
    // Descending diag(H); ties keep the original order (a stable sort).
    perm.sort((a, b) => h[b * n + b] - h[a * n + a] || a - b);
  }
  const hp = new Float64Array(n * n);
  let mean = 0;
  for (let i = 0; i < n; i++) mean += h[i * n + i] / n;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) hp[i * n + j] = h[perm[i] * n + perm[j]];
    hp[i * n + i] += o.damp * mean;
  }
  // H = L L^T; H^-1 = L^-T L^-1; H^-1 = U^T U with U upper.
  const l = cholesky(hp, n, what);
  const hinv = lowerInverseGram(lowerInverse(l, n), n);
  const l2 = cholesky(hinv, n, what);
  const u = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = i; j < n; j++) u[i * n + j] = l2[j * n + i];
  return { inDim: n, u, perm, dead };
}

/** Lower Cholesky factor L of a symmetric positive definite a [n, n] (row-major). */
function cholesky(a: Float64Array, n: number, what: string): Float64Array {
  const l = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    const ri = i * n;
    for (let j = 0; j <= i; j++) {
      const rj = j * n;
      let s = a[ri + j];
      for (let k = 0; k < j; k++) s -= l[ri + k] * l[rj + k];
      if (i === j) {
        if (!(s > 0)) {
          throw new UserError(
            `gptq: ${what}: the Hessian is not positive definite at column ${i}; ` +
              `give a larger --damp (or more calibration tokens)`,
          );
        }
        l[ri + i] = Math.sqrt(s);
      } else {
        l[ri + j] = s / l[rj + j];
      }
    }
  }
  return l;
}

/** The inverse of a lower triangular l [n, n], lower triangular. */
function lowerInverse(l: Float64Array, n: number): Float64Array {
  const x = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    const ri = i * n;
    x[ri + i] = 1;
    // row i of X = (e_i - sum_{m<i} L[i, m] X[m, :]) / L[i, i]; row m of X is zero past m.
    for (let m = 0; m < i; m++) {
      const c = l[ri + m];
      if (c === 0) continue;
      const rm = m * n;
      for (let k = 0; k <= m; k++) x[ri + k] -= c * x[rm + k];
    }
    const d = l[ri + i];
    for (let k = 0; k <= i; k++) x[ri + k] /= d;
  }
  return x;
}

/** X^T X for a lower triangular x [n, n]: sum over rows m of x[m, :]^T x[m, :]. */
function lowerInverseGram(x: Float64Array, n: number): Float64Array {
  const g = new Float64Array(n * n);
  for (let m = 0; m < n; m++) {
    const rm = m * n;
    for (let a = 0; a <= m; a++) {
      const c = x[rm + a];
      if (c === 0) continue;
      const ra = a * n;
      for (let b = 0; b <= a; b++) g[ra + b] += c * x[rm + b];
    }
  }
  for (let a = 0; a < n; a++) for (let b = 0; b < a; b++) g[b * n + a] = g[a * n + b];
  return g;
}

/** RTN's scale and zero for one group's values (the range always includes 0). */
export function groupParams(lo: number, hi: number, qmax: number): [number, number] {
  lo = Math.min(lo, 0);
  hi = Math.max(hi, 0);
  let scale = Math.f16round((hi - lo) / qmax);
  if (!(scale > 0)) scale = Math.f16round(1e-8) || 6e-8;
  const zero = Math.min(qmax, Math.max(0, Math.round(-lo / scale)));
  return [scale, zero];
}

/**
 * GPTQ of one linear given as W^T [in, out] (the layout weight sources give), with the factor
 * of its inputs' Hessian. W^T stays on the GPU for the trailing updates; the block loop runs here.
 */
export async function gptqQuantize(
  gpu: Gpu,
  wT: Float32Array,
  inDim: number,
  out: number,
  f: HessianFactor,
  o: GptqOptions,
): Promise<RtnResult> {
  checkGptqOptions(o);
  if (f.inDim !== inDim) {
    throw new Error(`gptq: the Hessian is for ${f.inDim} inputs, the matrix has ${inDim}`);
  }
  if (wT.length !== inDim * out) {
    throw new Error(`gptq: W^T has ${wT.length} values, expected ${inDim} x ${out}`);
  }
  const n = inDim, G = o.group, qmax = 2 ** o.bits - 1;
  const groups = Math.ceil(n / G);
  const q = new Uint8Array(out * n);
  const scales = new Float32Array(out * groups);
  const zeros = new Uint8Array(out * groups);
  // W^T rows in processing order, dead inputs zeroed.
  const wp = new Float32Array(n * out);
  for (let p = 0; p < n; p++) {
    const c = f.perm[p];
    if (!f.dead[c]) wp.set(wT.subarray(c * out, (c + 1) * out), p * out);
  }
  const setParams = (g: number, rows: Float32Array | Float64Array, count: number) => {
    for (let r = 0; r < out; r++) {
      let lo = 0, hi = 0;
      for (let k = 0; k < count; k++) {
        const v = rows[k * out + r];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      const [s, z] = groupParams(lo, hi, qmax);
      scales[r * groups + g] = s;
      zeros[r * groups + g] = z;
    }
  };
  if (o.actOrder) {
    // Static groups: each group's parameters from its original columns (dead ones zeroed).
    const rows = new Float32Array(G * out);
    for (let g = 0; g < groups; g++) {
      const c0 = g * G, c1 = Math.min(n, c0 + G);
      rows.fill(0);
      for (let c = c0; c < c1; c++) {
        if (!f.dead[c]) rows.set(wT.subarray(c * out, (c + 1) * out), (c - c0) * out);
      }
      setParams(g, rows, c1 - c0);
    }
  }
  const B = gptqBlock(G, o.actOrder);
  const bytes = n * out * 4;
  const wBuf = gpu.createBuffer(bytes, "gptq W^T");
  const uBuf = gpu.createBuffer(B * n * 4, "gptq U rows");
  const eBuf = gpu.createBuffer(B * out * 4, "gptq -Err^T");
  try {
    await gpu.write(wBuf, wp);
    const uRows = new Float32Array(B * n);
    const negErr = new Float32Array(B * out);
    const err = new Float64Array(out);
    for (let j1 = 0; j1 < n; j1 += B) {
      const j2 = Math.min(n, j1 + B), count = j2 - j1;
      // The block's rows of W^T, plus the rest of a group that starts here (for its range).
      const gEnd = !o.actOrder && j1 % G === 0 ? Math.min(n, j1 + G) : j2;
      const end = Math.max(j2, gEnd);
      const slab = Float64Array.from(
        new Float32Array(await gpu.read(wBuf, j1 * out * 4, (end - j1) * out * 4)),
      );
      for (let i = 0; i < count; i++) {
        const j = j1 + i;
        if (!o.actOrder && j % G === 0) {
          setParams(j / G, slab.subarray(i * out), Math.min(n, j + G) - j);
        }
        const g = Math.floor(f.perm[j] / G), col = f.perm[j];
        const d = f.u[j * n + j];
        const row = slab.subarray(i * out, (i + 1) * out);
        for (let r = 0; r < out; r++) {
          const s = scales[r * groups + g], z = zeros[r * groups + g];
          const v = Math.min(qmax, Math.max(0, Math.round(row[r] / s) + z));
          q[r * n + col] = v;
          err[r] = (row[r] - (v - z) * s) / d;
          negErr[i * out + r] = -err[r];
        }
        for (let k = i + 1; k < count; k++) {
          const c = f.u[j * n + j1 + k];
          if (c === 0) continue;
          const ro = k * out;
          for (let r = 0; r < out; r++) slab[ro + r] -= err[r] * c;
        }
      }
      if (j2 === n) break;
      // W^T[j2:, :] += U[j1:j2, j2:]^T (-Err^T): C[m, r] += sum_k At[k, m] B[k, r].
      for (let k = 0; k < count; k++) {
        for (let c = 0; c < n; c++) uRows[k * n + c] = f.u[(j1 + k) * n + c];
      }
      await gpu.write(uBuf, uRows.subarray(0, count * n));
      await gpu.write(eBuf, negErr.subarray(0, count * out));
      matmul(gpu, {
        M: n - j2,
        N: out,
        K: count,
        a: uBuf,
        aOffset: j2,
        lda: n,
        b: eBuf,
        ldb: out,
        c: wBuf,
        cOffset: j2 * out,
        ldc: out,
        accumulate: true,
      });
    }
    await gpu.flush();
  } finally {
    gpu.releaseBuffer(wBuf);
    gpu.releaseBuffer(uBuf);
    gpu.releaseBuffer(eBuf);
  }
  return { q, scales, zeros };
}
