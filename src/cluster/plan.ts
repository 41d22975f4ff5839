// Bits accounting and the choice of (d, n) per matrix kind. Bits per weight counts the codes at
// log2(n) bits per d-vector (padding included) plus the codebook's own share; as stored, codes
// take ceil(log2 n) bits each (src/io/pack.ts) and codebooks 16 bits per value.
import { UserError } from "../errors.ts";
import { codeBits as packedCodeBits } from "../io/pack.ts";
import { LINEAR_KINDS, type LinearKind, linearNames, type ModelConfig } from "../io/config.ts";

export type CodebookDtype = "f16" | "bf16";

export interface MatrixSettings {
  d?: number;
  n?: number;
}

export interface ClusterSettings {
  /** Target total bits per weight (codes + codebook); picks n, and d when not given. */
  bits?: number;
  d?: number;
  n?: number;
  overrides: Partial<Record<LinearKind, MatrixSettings>>;
  /** Codebooks per matrix (rows of W^T split evenly). */
  splits: number;
  codebookDtype: CodebookDtype;
  iters: number;
  seed: number;
  init: "random" | "kmeans++";
  /** Seeded k-means runs per matrix; the one with the lowest objective is kept. */
  restarts: number;
  /**
   * "activations": each vector of W^T's row i weighs diag_i, the second moment of input feature i
   * over the calibration tokens (src/cluster/stats.ts), in the k-means and in the (d, n) search.
   * Absent or "none": the plain weight error.
   */
  weighting?: "none" | "activations";
}

export interface MatrixPlan {
  kind: LinearKind;
  out: number;
  in: number;
  d: number;
  n: number;
  splits: number;
  pad: number;
  /** d-vectors per codebook. */
  vectors: number;
  codeBits: number;
  codebookBits: number;
  totalBits: number;
  /** Bits per weight as stored: codes packed at ceil(log2 n) bits, 16-bit codebook. */
  storedBits: number;
  reason: string;
}

export const MAX_N = 65536;
/** Largest vector length: the k-means kernels (src/cluster/kmeans.ts) handle d from 1 to 16. */
export const MAX_D = 16;
const D_CANDIDATES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];

/** Bits per weight of one matrix for (d, n). */
export function matrixBits(
  out: number,
  inDim: number,
  d: number,
  n: number,
  splits: number,
): { codeBits: number; codebookBits: number; storedBits: number; pad: number } {
  const cols = Math.ceil(out / d);
  const weights = out * inDim;
  const codeBits = (Math.log2(n) * inDim * cols) / weights;
  const codebookBits = (16 * splits * n * d) / weights;
  // codeBits(n) for the sizes a folder can hold; out-of-range n is refused later by validatePair.
  const bits = Number.isInteger(n) && n >= 1 && n <= MAX_N
    ? packedCodeBits(n)
    : Math.max(1, Math.ceil(Math.log2(n)));
  const stored = bits * inDim * cols / weights + codebookBits;
  return { codeBits, codebookBits, storedBits: stored, pad: cols * d - out };
}

/** Checks one (d, n) pair against a matrix. */
export function validatePair(
  kind: string,
  out: number,
  inDim: number,
  d: number,
  n: number,
  splits: number,
): void {
  if (!Number.isInteger(d) || d < 1) {
    throw new UserError(`${kind}: d must be an integer >= 1 (got ${d})`);
  }
  if (d > MAX_D) throw new UserError(`${kind}: d = ${d} is larger than ${MAX_D}`);
  if (!Number.isInteger(n) || n < 2) {
    throw new UserError(`${kind}: n must be an integer >= 2 (got ${n})`);
  }
  if (n > MAX_N) throw new UserError(`${kind}: n = ${n} exceeds ${MAX_N} (codes are 16-bit)`);
  if (inDim % splits !== 0) {
    throw new UserError(`${kind}: --splits ${splits} does not divide the ${inDim} input rows`);
  }
  const vectors = (inDim / splits) * Math.ceil(out / d);
  if (n > vectors) {
    throw new UserError(
      `${kind}: n = ${n} is larger than the ${vectors} vectors of dimension ${d} per codebook`,
    );
  }
}

/**
 * Largest n whose bits as stored (codes packed at ceil(log2 n) bits, 16-bit codebook) stay <=
 * target, or 0 when even n = 2 does not fit. Counting the stored bits keeps a --bits budget true
 * of the folder: the pick is a power of two unless the codebook's own share forbids it.
 */
export function largestN(
  out: number,
  inDim: number,
  d: number,
  splits: number,
  target: number,
): number {
  const vectors = (inDim / splits) * Math.ceil(out / d);
  let lo = 1, hi = Math.min(MAX_N, vectors);
  const fits = (n: number) => {
    return matrixBits(out, inDim, d, n, splits).storedBits <= target + 1e-12;
  };
  if (hi < 2 || !fits(2)) return 0;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (fits(mid)) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/** Mean squared error per weight of a quick k-means on a sample of a matrix, for ranking pairs. */
export type SampleError = (kind: LinearKind, d: number, n: number) => Promise<number>;

/** Resolves (d, n) for every matrix kind. */
export async function planMatrices(
  cfg: ModelConfig,
  s: ClusterSettings,
  sampleError?: SampleError,
): Promise<MatrixPlan[]> {
  if (s.bits === undefined && (s.d === undefined || s.n === undefined)) {
    const missing = LINEAR_KINDS.some((k) =>
      (s.overrides[k]?.d ?? s.d) === undefined || (s.overrides[k]?.n ?? s.n) === undefined
    );
    if (missing) throw new UserError("compress: give --bits B, or both --d and --n");
  }
  if (s.bits !== undefined && !(s.bits > 0)) {
    throw new UserError(`compress: --bits must be > 0 (got ${s.bits})`);
  }
  // A bad d names the flag it came from, before any matrix is looked at.
  const checkD = (d: number | undefined, flag: string) => {
    if (d !== undefined && (!Number.isInteger(d) || d < 1 || d > MAX_D)) {
      throw new UserError(`compress: ${flag} must be an integer from 1 to ${MAX_D} (got ${d})`);
    }
  };
  checkD(s.d, "--d");
  for (const k of LINEAR_KINDS) checkD(s.overrides[k]?.d, `--override ${k}:d`);
  const plans: MatrixPlan[] = [];
  for (const lin of linearNames(0, cfg)) {
    const o = s.overrides[lin.kind] ?? {};
    const d = o.d ?? s.d, n = o.n ?? s.n;
    const make = (dd: number, nn: number, reason: string): MatrixPlan => {
      validatePair(lin.kind, lin.out, lin.in, dd, nn, s.splits);
      const b = matrixBits(lin.out, lin.in, dd, nn, s.splits);
      return {
        kind: lin.kind,
        out: lin.out,
        in: lin.in,
        d: dd,
        n: nn,
        splits: s.splits,
        pad: b.pad,
        vectors: (lin.in / s.splits) * Math.ceil(lin.out / dd),
        codeBits: b.codeBits,
        codebookBits: b.codebookBits,
        totalBits: b.codeBits + b.codebookBits,
        storedBits: b.storedBits,
        reason,
      };
    };
    if (d !== undefined && n !== undefined) {
      plans.push(make(d, n, "given"));
      continue;
    }
    const target = s.bits!;
    const ds = d !== undefined ? [d] : D_CANDIDATES;
    const candidates: { d: number; n: number }[] = [];
    for (const dd of ds) {
      if (n !== undefined) {
        const b = matrixBits(lin.out, lin.in, dd, n, s.splits);
        const vectors = (lin.in / s.splits) * Math.ceil(lin.out / dd);
        if (b.storedBits <= target && n <= vectors) candidates.push({ d: dd, n });
      } else {
        const nn = largestN(lin.out, lin.in, dd, s.splits, target);
        if (nn >= 2) candidates.push({ d: dd, n: nn });
      }
    }
    if (candidates.length === 0) {
      throw new UserError(
        `compress: no (d, n) fits ${target} bits per weight for ${lin.kind} [${lin.out}x${lin.in}]`,
      );
    }
    if (candidates.length === 1 || !sampleError) {
      // Without a sample error, the pair closest to the target.
      const best = candidates.reduce((a, b) => {
        const ba = matrixBits(lin.out, lin.in, a.d, a.n, s.splits);
        const bb = matrixBits(lin.out, lin.in, b.d, b.n, s.splits);
        return bb.storedBits > ba.storedBits ? b : a;
      });
      plans.push(
        make(best.d, best.n, candidates.length === 1 ? "only pair that fits" : "closest to target"),
      );
      continue;
    }
    const errors = await searchD(candidates, (c) => sampleError(lin.kind, c.d, c.n));
    const best = errors[0];
    const others = errors.slice(1, 4).map((e) => `d=${e.d}:${e.mse.toExponential(2)}`).join(" ");
    plans.push(make(best.d, best.n, `lowest sample mse ${best.mse.toExponential(2)} (${others})`));
  }
  return plans;
}

/**
 * The candidates' sample errors, lowest first, measuring only some: the powers of two first,
 * then the neighbours (next smaller and larger d) of the best so far until they are measured too
 * (a local minimum in d). The error falls and then rises with d at a fixed bit budget, so this
 * finds the best pair with about 6 sample runs instead of one per candidate.
 */
export async function searchD(
  candidates: { d: number; n: number }[],
  error: (c: { d: number; n: number }) => Promise<number>,
): Promise<{ d: number; n: number; mse: number }[]> {
  const sorted = [...candidates].sort((a, b) => a.d - b.d);
  const seen = new Map<number, { d: number; n: number; mse: number }>();
  const measure = async (c: { d: number; n: number } | undefined) => {
    if (c && !seen.has(c.d)) seen.set(c.d, { ...c, mse: await error(c) });
  };
  const ranked = () => [...seen.values()].sort((a, b) => a.mse - b.mse || a.d - b.d);
  for (const c of sorted) if ((c.d & (c.d - 1)) === 0) await measure(c);
  if (seen.size === 0) await measure(sorted[0]);
  for (;;) {
    const before = seen.size;
    const i = sorted.findIndex((c) => c.d === ranked()[0].d);
    await measure(sorted[i - 1]);
    await measure(sorted[i + 1]);
    if (seen.size === before) return ranked();
  }
}

/** Total bits per weight over all compressed matrices of the model. */
export function overallBits(plans: MatrixPlan[]): { total: number; stored: number } {
  let bits = 0, stored = 0, weights = 0;
  for (const p of plans) {
    const w = p.out * p.in;
    bits += p.totalBits * w;
    stored += p.storedBits * w;
    weights += w;
  }
  return { total: bits / weights, stored: stored / weights };
}

/** Human table of the plan. */
export function formatPlan(plans: MatrixPlan[]): string {
  const rows = plans.map((p) =>
    `${p.kind.padEnd(5)} [${p.out}x${p.in}]`.padEnd(20) +
    `d=${p.d} n=${p.n}`.padEnd(16) +
    `code ${p.codeBits.toFixed(3)} + codebook ${p.codebookBits.toFixed(3)} = ${
      p.totalBits.toFixed(3)
    } bits` +
    `  (${p.reason})`
  );
  return rows.join("\n");
}
