// Lloyd's k-means (squared L2) on the GPU, exact and deterministic, with Yinyang-style bounds.
//
// One Lloyd iteration = update (means of the assigned points, on the host) + assignment (nearest
// centroid, on the GPU). The assignment is the O(N n d) part: shaders/kmeans.wgsl scans centroid
// ranges with each invocation holding P points in registers; ranges are kept short so no
// invocation runs into Mesa's 65,535-iteration loop cap, and the points are bound in chunks that
// fit maxStorageBufferBindingSize.
//
// Acceleration, exact (Ding et al. 2015's Yinyang group bounds, Hamerly 2010's upper bound and
// centroid gap): the initial centroids are put in k-d order so that G index ranges ("groups",
// 16 by default, up to 128 for large n) are compact in space. Each point carries, between
// iterations, one lower bound per group on the distance to every centroid of the group other
// than its own centroid a. Each pass computes u = |x - c_a| exactly (one distance per point) and
// shrinks each group's bound by
// the group's largest centroid movement, except for the J (32) centroids that moved most in the
// whole run: those are bounded one by one through |x - c_j| >= |c_a - c_j| - u, with the
// centroid distances tabulated on the host, so that a few far-flung centroids (tails, re-seeded
// empty clusters) do not collapse every bound. s(a), half the distance from a to its nearest
// other centroid (n^2 distances per pass), is an optional extra bound. A point whose u is below
// every bound provably keeps a; any other point joins (through atomic counters on the GPU) the
// active list of each group whose bound is not above u, and only those lists are scanned, each
// against its group, with host-sized dispatches. Bounds made from f32 distances are widened by
// more than the f32 rounding error (see the shader), so a group or point is skipped only when
// brute force's f32 scan would not pick it either: codes equal brute-force Lloyd's from the same
// initialisation, which the tests check bit for bit.
//
// For d <= 4 and n >= 1,024 (pruning "auto"; "tree" forces it up to d = 8) the assignment goes
// through a k-d tree over the centroids instead (src/cluster/kmeans_tree.ts): tiles of points
// scan only the centroids that can be nearest to one of them, far fewer than the groups leave
// at small d; codes again equal brute force's.
//
// Round trips: the list lengths stay on the GPU (each group's scan is dispatched for every row
// and reads its count there; they are copied to a history read once at the end), so a pass
// costs one readback, the codes, which the host update needs. On llvmpipe a readback costs
// ~13 ms whatever its size, so small runs (N * n * d <= HOST_MAX_WORK, backend "auto") assign on
// the host instead (HostAssigner: the scan's f32 arithmetic step for step, with Elkan's and
// Hamerly's bounds), with the same results and no GPU work at all.
//
// Determinism: a point's scan result does not depend on its slot, list position or dispatch;
// every point meets centroids in increasing index order and ties go to the lowest index; the
// update runs on the host in f64 in point order (O(N d), against the O(N n d) assignment). The
// same inputs and seed give bit-identical centroids and codes.
import code from "../../shaders/kmeans.wgsl" with { type: "text" };
import { type Binding, type Gpu, grid } from "../gpu/device.ts";
import { expandWgsl } from "../gpu/template.ts";
import { Rng } from "../util/rng.ts";
import {
  type PassStats,
  TREE_MAX_N,
  TreeAssigner,
  treeGpuBytes,
  treeSupports,
} from "./kmeans_tree.ts";

export type { PassStats } from "./kmeans_tree.ts";

export interface KmeansOptions {
  /** Lloyd iterations (update + assignment) after the initial assignment; default 20. */
  iters?: number;
  /** Seed of the initialisation; default 0. */
  seed?: number;
  /** "random": n distinct points (partial Fisher-Yates); "kmeans++": D^2 sampling on the host. */
  init?: "random" | "kmeans++";
  /** Hamerly's bounds (exact); false scans every centroid for every point. Default true. */
  accelerate?: boolean;
  /** Called after each assignment: i = 0 for the initial one, then 1 .. iterations. */
  onIter?: (i: number, objective: number) => void;
  /** Points per GPU chunk (default: as many as fit one storage binding). */
  maxPointsPerDispatch?: number;
  /** Centroids scanned per dispatch (default 16,384; at most 60,000 for Mesa's loop cap). */
  maxCentroidsPerDispatch?: number;
  /**
   * Also use s(a), half the gap from a centroid to its nearest other centroid, as a lower bound.
   * It costs n^2 distance evaluations per iteration; default false.
   */
  centroidGap?: boolean;
  /**
   * Most centroid groups for the bounds (a power of two; default defaultMaxGroups(n): 16, up to
   * 128 for n >= 65,536): more groups filter better and cost 8 bytes per point each. Results do
   * not depend on it.
   */
  maxGroups?: number;
  /** Receives per-assignment-pass counts at the end (benchmarks, tests). */
  onStats?: (stats: PassStats[]) => void;
  /**
   * Where the assignment runs. "gpu" (default): the kernels below. "host": the same f32
   * arithmetic on the CPU (Elkan's and Hamerly's bounds when accelerated), with no GPU round
   * trip and no GPU memory. "auto": the host when a pass is small (N * n * d <= HOST_MAX_WORK),
   * where the GPU's fixed cost per readback (~13 ms on llvmpipe, one per pass) would dominate.
   * Results are the same whichever runs (on llvmpipe, bit for bit; see HostAssigner). The
   * cluster stage and planning's sample runs use "auto" (the memory plan counts no GPU bytes for
   * a matrix assigned on the host).
   */
  backend?: "auto" | "gpu" | "host";
  /**
   * How the accelerated GPU assignment prunes (results do not depend on it). "tree": a k-d tree
   * over the centroids, rebuilt each pass, gives each tile of points the list of centroids that
   * can be nearest to one of them (src/cluster/kmeans_tree.ts; d <= 8, n <= 120,000).
   * "yinyang": the group bounds above. "auto" (default): "tree" for d <= 4 and n >= TREE_MIN_N,
   * else "yinyang". The host backend ignores it.
   */
  pruning?: "auto" | "yinyang" | "tree";
  /**
   * One non-negative weight per point ([N]; e.g. the second moment of the input feature a
   * ClusComp vector's row belongs to). Assignments do not depend on it; the update takes the
   * weighted mean, `objective` is the weighted squared error, a cluster of total weight 0 is
   * re-seeded like an empty one (from the points of largest weighted error), and "kmeans++"
   * draws the first point proportionally to weight and each next one proportionally to
   * weight * D^2 ("random" ignores it). Absent, or all 1: bit-identical to the unweighted run.
   */
  weights?: Float32Array;
}

export interface KmeansResult {
  /** [n, d] */
  centroids: Float32Array;
  /** [N]: the nearest final centroid of each point. */
  codes: Uint32Array;
  /**
   * Sum of squared L2 errors of the points against their codes' centroids (f64), each times its
   * point's weight when `weights` are given.
   */
  objective: number;
  /** The plain (unweighted) sum of squared errors: equals `objective` without weights. */
  sse: number;
  /** Lloyd iterations run (fewer than iters when an update left the centroids unchanged). */
  iterations: number;
  /** Point-centroid (and centroid-centroid) distances computed. */
  distanceEvals: number;
  /** N * n per assignment pass: what brute force would compute. */
  bruteForceEvals: number;
}

const WG = 32;
const BOUNDS_WG = 256;
const BIG = 3.40282347e38;
/** Most centroids bounded one by one (the fastest movers of each pass). */
const MAX_J = 32;
const FIRST = 1, LISTED = 2, GPUCOUNT = 4;
const MAX_RANGE = 60_000;
/** Cells of the initial k-d order; any power of two up to this makes compact groups. */
const KD_CELLS = 1024;
/**
 * Default most groups (memory: 8 bytes per point per group): 16, and n / 512 up to 128 from
 * n = 65,536 on. Measured (d = 4, 20 iterations, share of brute force's distances computed,
 * llvmpipe): N = 1,048,576, n = 65,536: 16 groups 19.9%, 64 groups 11.6%, 128 groups 8.8% (and
 * less wall time); N = 262,144, n = 16,384: 16 groups 18.5%, 32 groups 14.2%, 64 groups 10.8%,
 * but 5-25% more time than 16 there (smaller groups, more per-group passes over the points).
 */
const MAX_GROUPS = 16;
const MAX_GROUPS_LARGE = 128;
const LARGE_N = 65_536;

/** The default most groups for n centroids (see MAX_GROUPS). */
export function defaultMaxGroups(n: number): number {
  return n < LARGE_N ? MAX_GROUPS : Math.min(MAX_GROUPS_LARGE, 2 ** Math.floor(Math.log2(n / 512)));
}
/**
 * "auto" pruning picks the k-d tree for d <= TREE_AUTO_MAX_D and n >= TREE_MIN_N. Measured
 * (llvmpipe, 20 iterations, CPU seconds, share of brute force's distances): 65,536 x d 4 x
 * n 4,096: tree 0.94-1.25 s, 6.6%; Yinyang 2.1-2.3 s, 16%. 32,768 x d 8 x n 1,024: tree
 * 1.9-2.7 s, 69%; Yinyang 1.1-1.5 s, 32% (boxes of 64 points prune little in 8 dimensions).
 */
export const TREE_MIN_N = 1024;
export const TREE_AUTO_MAX_D = 4;

/** Whether an accelerated GPU run with these options assigns through the k-d tree. */
export function usesTree(
  d: number,
  n: number,
  opts: Pick<KmeansOptions, "accelerate" | "pruning"> = {},
): boolean {
  if (!(opts.accelerate ?? true)) return false;
  const pruning = opts.pruning ?? "auto";
  if (pruning === "yinyang") return false;
  if (pruning === "tree") {
    if (!treeSupports(d, n)) {
      throw new Error(
        `kmeans: the k-d tree handles d <= 8 and n <= ${TREE_MAX_N} (d = ${d}, n = ${n})`,
      );
    }
    return true;
  }
  return d <= TREE_AUTO_MAX_D && n >= TREE_MIN_N && treeSupports(d, n);
}

/** Fewest centroids per group: each listed point is loaded once per group it is scanned in. */
const MIN_GROUP = 64;

/** Centroid groups G for n centroids: a power of two, 1 .. maxGroups. */
export function groupCount(n: number, maxGroups = defaultMaxGroups(n)): number {
  let g = 1;
  // (The shader computes g * n in u32.)
  while (g * 2 <= maxGroups && g * 2 <= KD_CELLS && g * 2 * MIN_GROUP <= n && g * 2 * n < 2 ** 32) {
    g *= 2;
  }
  return g;
}

/** Group g's centroids: [floor(g n / G), floor((g + 1) n / G)). */
function groupStart(g: number, n: number, G: number): number {
  return Math.floor((g * n) / G);
}

/** Points each scan invocation holds: more amortise the centroid loads, but cost registers. */
function pointsPerInvocation(d: number): number {
  return d <= 8 ? 64 : 32;
}

const scratchF = new Float32Array(1);
const scratchU = new Uint32Array(scratchF.buffer);

/** f32 at or below v (v >= 0). */
function roundDownF32(v: number): number {
  const f = Math.fround(v);
  if (f <= v) return f;
  scratchF[0] = f;
  scratchU[0]--;
  return scratchF[0];
}

/** f32 at or above v (v >= 0). */
function roundUpF32(v: number): number {
  const f = Math.fround(v);
  if (f >= v) return f;
  scratchF[0] = f;
  scratchU[0]++;
  return scratchF[0];
}

/**
 * Initial centroids [n, d]. "random": n distinct points chosen by a partial Fisher-Yates shuffle
 * (sparse, O(n) memory) driven by Rng(seed). "kmeans++": first point uniform, then each next one
 * with probability proportional to its squared distance to the nearest chosen centroid (f64, in
 * point order; with weights, the first point proportionally to weight and the next ones to weight
 * * D^2); costs O(N n d) on the host, so it suits moderate N * n. Either way the chosen
 * points are then put in k-d order (kdOrder), which makes the centroid groups compact; the order
 * depends only on the points and n, so every mode (and the reference) starts identically.
 */
export function initCentroids(
  x: Float32Array,
  N: number,
  d: number,
  n: number,
  seed: number,
  init: "random" | "kmeans++" = "random",
  weights?: Float32Array,
): Float32Array {
  let cells = 1;
  while (cells * 2 <= Math.min(KD_CELLS, n)) cells *= 2;
  return kdOrder(pickPoints(x, N, d, n, seed, init, weights), n, d, cells);
}

/**
 * Reorders centroids [n, d] so that each group's index range holds a compact cell: the range of
 * groups [g0, g1) is sorted along the dimension of widest spread (ties by draw order) and
 * split at group (g0 + g1) / 2, recursively. Within a group the order is kept.
 */
export function kdOrder(c: Float32Array, n: number, d: number, G: number): Float32Array {
  const order = Array.from({ length: n }, (_, i) => i);
  const split = (g0: number, g1: number): void => {
    if (g1 - g0 <= 1) return;
    const lo = groupStart(g0, n, G), hi = groupStart(g1, n, G);
    let dim = 0, widest = -1;
    for (let k = 0; k < d; k++) {
      let min = Infinity, max = -Infinity;
      for (let i = lo; i < hi; i++) {
        const v = c[order[i] * d + k];
        if (v < min) min = v;
        if (v > max) max = v;
      }
      if (max - min > widest) {
        widest = max - min;
        dim = k;
      }
    }
    const part = order.slice(lo, hi).sort((a, b) => c[a * d + dim] - c[b * d + dim] || a - b);
    for (let i = lo; i < hi; i++) order[i] = part[i - lo];
    const gm = (g0 + g1) >> 1;
    split(g0, gm);
    split(gm, g1);
  };
  split(0, G);
  const out = new Float32Array(n * d);
  for (let i = 0; i < n; i++) out.set(c.subarray(order[i] * d, order[i] * d + d), i * d);
  return out;
}

/** The n initial points, in the order they were drawn (weights: kmeans++ only). */
export function pickPoints(
  x: Float32Array,
  N: number,
  d: number,
  n: number,
  seed: number,
  init: "random" | "kmeans++" = "random",
  weights?: Float32Array,
): Float32Array {
  if (N < n) throw new Error(`kmeans: ${n} centroids need at least as many points (N = ${N})`);
  const rng = new Rng(seed);
  const c = new Float32Array(n * d);
  if (init === "random") {
    const swapped = new Map<number, number>();
    for (let i = 0; i < n; i++) {
      const j = i + rng.int(N - i);
      const vi = swapped.get(i) ?? i, vj = swapped.get(j) ?? j;
      swapped.set(j, vi);
      swapped.set(i, vj);
      c.set(x.subarray(vj * d, vj * d + d), i * d);
    }
    return c;
  }
  if (init !== "kmeans++") throw new Error(`kmeans: unknown init "${init}"`);
  const dist = new Float64Array(N).fill(Infinity);
  const chosen = new Uint8Array(N);
  const w = weights;
  // The first point: uniform, or proportionally to weight (the same draw when every weight is
  // 1: acc reaches i + 1 > r first at i = floor(r)).
  let pick = w ? -1 : rng.int(N);
  for (let m = 0; m < n; m++) {
    if (m > 0 || w) {
      // Each point's share: weight * D^2 (D^2 = 1 for the first weighted draw).
      const share = (i: number) => w ? w[i] * (m === 0 ? 1 : dist[i]) : dist[i];
      let total = 0;
      for (let i = 0; i < N; i++) total += share(i);
      pick = -1;
      if (total > 0) {
        const r = rng.next() * total;
        let acc = 0;
        for (let i = 0; i < N; i++) {
          const v = share(i);
          if (v === 0) continue;
          acc += v;
          pick = i;
          if (acc > r) break;
        }
      }
      // Every point sits on a centroid or weighs nothing: the lowest unused.
      if (pick < 0) pick = chosen.indexOf(0);
    }
    chosen[pick] = 1;
    c.set(x.subarray(pick * d, pick * d + d), m * d);
    for (let i = 0; i < N; i++) {
      let e = 0;
      for (let k = 0; k < d; k++) {
        const t = x[i * d + k] - x[pick * d + k];
        e += t * t;
      }
      if (e < dist[i]) dist[i] = e;
    }
  }
  return c;
}

/** Squared error of each point against its code's centroid, times its weight (f64). */
function pointErrors(
  x: Float32Array,
  N: number,
  d: number,
  c: Float32Array,
  codes: Uint32Array,
  weights?: Float32Array,
): Float64Array {
  const e = new Float64Array(N);
  for (let i = 0; i < N; i++) {
    const a = codes[i] * d;
    let s = 0;
    for (let k = 0; k < d; k++) {
      const t = x[i * d + k] - c[a + k];
      s += t * t;
    }
    e[i] = weights ? weights[i] * s : s;
  }
  return e;
}

/**
 * Sum of squared errors (f64, point order), each term times its point's weight when given
 * (w * t^2 per coordinate, so weights of 1 give the unweighted sum bit for bit).
 */
export function sse(
  x: Float32Array,
  N: number,
  d: number,
  c: Float32Array,
  codes: Uint32Array,
  weights?: Float32Array,
): number {
  let total = 0;
  for (let i = 0; i < N; i++) {
    const a = codes[i] * d;
    const w = weights ? weights[i] : 1;
    for (let k = 0; k < d; k++) {
      const t = x[i * d + k] - c[a + k];
      total += w * (t * t);
    }
  }
  return total;
}

/** The `count` points of largest error, in decreasing error order, ties by lowest index. */
function largestErrors(e: Float64Array, count: number): number[] {
  const N = e.length;
  if (count <= 32) {
    const taken = new Set<number>();
    const out: number[] = [];
    for (let m = 0; m < count; m++) {
      let best = -1;
      for (let i = 0; i < N; i++) {
        if (!taken.has(i) && (best < 0 || e[i] > e[best])) best = i;
      }
      taken.add(best);
      out.push(best);
    }
    return out;
  }
  const idx = new Uint32Array(N);
  for (let i = 0; i < N; i++) idx[i] = i;
  idx.sort((a, b) => e[b] - e[a] || a - b);
  return Array.from(idx.subarray(0, count));
}

/**
 * The update step, on the host in f64 and in point order (deterministic; O(N d), cheap next to
 * the assignment): each centroid becomes the mean (weighted mean, with weights) of its points,
 * rounded to f32. Empty clusters (total weight 0), in increasing index order, each take one of
 * the points with the largest (weighted) error against the centroids `prev` the codes were
 * assigned to (distinct points, decreasing error, ties by lowest index); those points stay
 * counted in their own clusters' means. Weights of 1 give the unweighted update bit for bit.
 */
export function updateCentroids(
  x: Float32Array,
  N: number,
  d: number,
  n: number,
  codes: Uint32Array,
  prev: Float32Array,
  weights?: Float32Array,
): Float32Array {
  const sums = new Float64Array(n * d);
  const counts = new Float64Array(n);
  for (let i = 0; i < N; i++) {
    const a = codes[i];
    if (weights) {
      const w = weights[i];
      counts[a] += w;
      for (let k = 0; k < d; k++) sums[a * d + k] += w * x[i * d + k];
    } else {
      counts[a]++;
      for (let k = 0; k < d; k++) sums[a * d + k] += x[i * d + k];
    }
  }
  const next = new Float32Array(n * d);
  const empty: number[] = [];
  for (let j = 0; j < n; j++) {
    if (counts[j] === 0) {
      empty.push(j);
      continue;
    }
    for (let k = 0; k < d; k++) next[j * d + k] = sums[j * d + k] / counts[j];
  }
  if (empty.length > 0) {
    const far = largestErrors(pointErrors(x, N, d, prev, codes, weights), empty.length);
    for (let m = 0; m < empty.length; m++) {
      next.set(x.subarray(far[m] * d, far[m] * d + d), empty[m] * d);
    }
  }
  return next;
}

function sameBits(a: Float32Array, b: Float32Array): boolean {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) return false;
  return true;
}

/** Sizes of one run's GPU state (shared by the Assigner and kmeansGpuBytes). */
function planBuffers(
  d: number,
  n: number,
  maxBinding: number,
  accelerate: boolean,
  maxGroups: number,
  maxPoints: number,
) {
  // Brute force needs no group bounds: one group keeps its dispatches long.
  const G = accelerate ? groupCount(n, maxGroups) : 1;
  // Every per-chunk buffer must fit one binding; the active lists are the largest.
  const fit = Math.floor(maxBinding / (4 * Math.max(d, G + 1, 3)));
  const rowsPerChunk = Math.max(1, Math.min(maxPoints, fit));
  const fixed = n + 2 * G + 1;
  const jn = Math.max(
    0,
    Math.min(MAX_J, Math.floor(n / 16), Math.floor((maxBinding / 4 - fixed) / n)),
  );
  return {
    G,
    jn,
    rowsPerChunk,
    movesBytes: (fixed + n * jn) * 4,
    cntStride: Math.ceil(((G + 1) * 4) / 256) * 256,
  };
}

/**
 * GPU bytes kmeans() allocates for N points of dimension d and n centroids (buffers as created,
 * before the runtime's rounding to 4 bytes; at most 16 extra bytes per buffer). About
 * N * (d + 2G + 6) * 4 bytes for the accelerated run with G groups (defaultMaxGroups(n)); about
 * N * (d + 1) * 4 plus a candidate buffer of up to 16 MiB through the k-d tree (usesTree). Runs
 * on the host (backend "host", or "auto" on small problems) allocate none of it.
 */
export function kmeansGpuBytes(
  N: number,
  d: number,
  n: number,
  maxBinding: number,
  opts: Pick<
    KmeansOptions,
    "accelerate" | "maxGroups" | "maxPointsPerDispatch" | "centroidGap" | "iters" | "pruning"
  > = {},
): number {
  const accelerate = opts.accelerate ?? true;
  const { maxPoints, maxGroups } = planOptions(opts, n);
  if (usesTree(d, n, opts)) {
    return treeGpuBytes(N, d, n, maxBinding, maxPoints);
  }
  const p = planBuffers(d, n, maxBinding, accelerate, maxGroups, maxPoints);
  const perRow = (G: number, dims: number) => (dims + (G + 1) + 2 + 3 + G) * 4;
  const chunks = Math.ceil(N / p.rowsPerChunk);
  let bytes = N * perRow(p.G, d) + n * d * 4 + p.movesBytes + 2 * chunks * p.cntStride;
  if (accelerate && opts.centroidGap) bytes += n * perRow(1, 0);
  if (accelerate) bytes += Math.max(1, opts.iters ?? 20) * chunks * p.cntStride; // count history
  return bytes;
}

interface Chunk {
  row0: number;
  rows: number;
  groups: number;
  x: GPUBuffer; // [rows, d]
  list: GPUBuffer; // [groups + 1, rows]
  code: GPUBuffer; // [2, rows]
  st: GPUBuffer; // [3, rows]
  lbs: GPUBuffer; // [groups, rows]
}

/**
 * Brute-force work per pass (N * n * d) up to which "auto" assigns on the host: there a pass
 * costs ~2 ns per unit of work (less with the bounds), on llvmpipe ~15 ms of fixed cost.
 */
export const HOST_MAX_WORK = 1 << 22;
const F32_MAX = 3.4028234663852886e38;
/** Host bound guards (see HostAssigner): as the shader's REL and ABS. */
const H_REL = 4e-6, H_ABS = 1e-18;

/**
 * The assignment on the host. Distances use the scan kernel's f32 arithmetic step for step:
 * t = x - c rounded to f32, t * t rounded, added to the running sum and rounded (llvmpipe
 * evaluates WGSL's fma unfused, so this is bit for bit what the GPU computes there, which the
 * tests check); the nearest centroid is the first of the smallest, as on the GPU.
 *
 * Accelerated, Elkan's bounds (in f64, on true distances): per point an upper bound u on its
 * distance to its centroid a, a lower bound on its distance to each other centroid j (stored
 * lazily as bound + the total movement of j so far, so a pass touches only points it scans),
 * and Hamerly's lower bound on all of them at once. Centroid j is ruled out for a point when
 * u * (1 + REL) + ABS < L * (1 - REL) - ABS, L being its lower bound or |c_a - c_j| - u
 * (Elkan's centroid test; with s(a), half the gap from a to its nearest other centroid, for the
 * whole point at once). The margins exceed the f32 evaluation error (relative (d + 3) 2^-24 <
 * 1.2e-6 on squares) three times over, so a ruled-out centroid's f32 distance is strictly above
 * a's: the first of the smallest among the rest is brute force's pick.
 */
class HostAssigner {
  evals = 0;
  passes = 0;
  stats: PassStats[] = [];
  private readonly codes: Uint32Array;
  private readonly u: Float64Array;
  /** Hamerly's bound: below the distance to every centroid but the point's own. */
  private readonly l: Float64Array;
  /** [N, n] Elkan's bounds plus cum[j] at the time they were made (accelerated only). */
  private readonly lb: Float64Array;
  /** Total movement of each centroid so far (upper bounds). */
  private readonly cum: Float64Array;
  private readonly e: Float32Array;

  constructor(
    private readonly x: Float32Array,
    private readonly N: number,
    private readonly d: number,
    private readonly n: number,
    private readonly accelerate: boolean,
  ) {
    this.codes = new Uint32Array(N);
    this.u = new Float64Array(N);
    this.l = new Float64Array(N);
    this.lb = new Float64Array(accelerate ? N * n : 0);
    this.cum = new Float64Array(n);
    this.e = new Float32Array(n);
  }

  /** Full f32 scan of point i: sets its code and bounds. */
  private scan(i: number, c: Float32Array): void {
    const { x, d, n, e } = this;
    const fr = Math.fround;
    const o = i * d;
    let b = F32_MAX, s = F32_MAX, bi = 0;
    for (let j = 0, cj = 0; j < n; j++, cj += d) {
      let v = 0;
      for (let k = 0; k < d; k++) {
        const t = fr(x[o + k] - c[cj + k]);
        v = fr(v + fr(t * t));
      }
      e[j] = v;
      if (v < b) {
        s = b;
        b = v;
        bi = j;
      } else if (v < s) s = v;
    }
    this.codes[i] = bi;
    this.u[i] = Math.sqrt(b) * (1 + H_REL) + H_ABS;
    this.l[i] = Math.sqrt(s) * (1 - H_REL) - H_ABS;
    if (this.accelerate) {
      const { lb, cum } = this;
      for (let j = 0, at = i * n; j < n; j++) lb[at + j] = Math.sqrt(e[j]) * (1 - H_REL) + cum[j];
    }
  }

  /** f32 squared distance of point i to centroid j (as the scan computes it). */
  private dist(i: number, c: Float32Array, j: number): number {
    const { x, d } = this;
    const fr = Math.fround;
    let v = 0;
    for (let k = 0; k < d; k++) {
      const t = fr(x[i * d + k] - c[j * d + k]);
      v = fr(v + fr(t * t));
    }
    return v;
  }

  assign(cents: Float32Array, prev: Float32Array | null): Uint32Array {
    const { N, d, n } = this;
    this.passes++;
    const stat: PassStats = { active: 0, listed: 0, evals: 0 };
    if (!this.accelerate || prev === null) {
      for (let i = 0; i < N; i++) this.scan(i, cents);
      stat.active = stat.listed = N;
      stat.evals = N * n;
    } else {
      const { u, l, lb, cum, codes } = this;
      // Movements (upper bounds), their running totals, and centroid distances (lower bounds).
      const mv = new Float64Array(n);
      let m1 = -1, m2 = -1; // the largest and second-largest movement's centroids
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let k = 0; k < d; k++) {
          const t = cents[j * d + k] - prev[j * d + k];
          s += t * t;
        }
        mv[j] = Math.sqrt(s) * (1 + 1e-12);
        cum[j] += mv[j];
        if (m1 < 0 || mv[j] > mv[m1]) {
          m2 = m1;
          m1 = j;
        } else if (m2 < 0 || mv[j] > mv[m2]) m2 = j;
      }
      const cc = new Float64Array(n * n);
      const gap = new Float64Array(n).fill(Infinity);
      for (let a = 0; a < n; a++) {
        for (let j = a + 1; j < n; j++) {
          let s = 0;
          for (let k = 0; k < d; k++) {
            const t = cents[a * d + k] - cents[j * d + k];
            s += t * t;
          }
          const h = Math.sqrt(s) * (1 - 1e-12);
          cc[a * n + j] = cc[j * n + a] = h;
          if (0.5 * h < gap[a]) gap[a] = 0.5 * h;
          if (0.5 * h < gap[j]) gap[j] = 0.5 * h;
        }
      }
      stat.evals += (n * (n - 1)) / 2;
      const hi = (v: number) => v * (1 + H_REL) + H_ABS;
      const lo = (v: number) => v * (1 - H_REL) - H_ABS;
      for (let i = 0; i < N; i++) {
        const a = codes[i];
        let ui = u[i] + mv[a];
        const li = l[i] - (a === m1 ? (m2 < 0 ? 0 : mv[m2]) : mv[m1]);
        if (hi(ui) < lo(Math.max(li, 2 * gap[a] - ui))) {
          u[i] = ui;
          l[i] = li;
          continue;
        }
        const ea = this.dist(i, cents, a);
        stat.evals++;
        ui = hi(Math.sqrt(ea));
        if (hi(ui) < lo(Math.max(li, 2 * gap[a] - ui))) {
          u[i] = ui;
          l[i] = li;
          continue;
        }
        // Elkan: centroid by centroid.
        stat.active++;
        const at = i * n, ca = a * n;
        let b = ea, bi = a, bu = ui;
        const hu = hi(ui);
        for (let j = 0; j < n; j++) {
          if (j === a || hu < lo(Math.max(lb[at + j] - cum[j], cc[ca + j] - ui))) continue;
          const v = this.dist(i, cents, j);
          stat.evals++;
          lb[at + j] = Math.sqrt(v) * (1 - H_REL) + cum[j];
          if (v < b || (v === b && j < bi)) {
            b = v;
            bi = j;
          }
        }
        if (bi !== a) {
          bu = hi(Math.sqrt(b));
          lb[at + a] = Math.sqrt(ea) * (1 - H_REL) + cum[a];
        }
        // Hamerly's bound from the fresh per-centroid bounds.
        let m = Infinity;
        for (let j = 0; j < n; j++) {
          if (j !== bi) m = Math.min(m, lb[at + j] - cum[j]);
        }
        codes[i] = bi;
        u[i] = bu;
        l[i] = lo(m);
      }
      stat.listed = stat.active;
    }
    this.evals += stat.evals;
    this.stats.push(stat);
    return this.codes.slice();
  }
}

/** GPU state of one k-means run: point chunks with their bounds, centroids, movements. */
class Assigner {
  private readonly P: number;
  private readonly G: number;
  /** Centroids in J (bounded one by one in `bounds`). */
  private readonly jn: number;
  private readonly scanPipe: GPUComputePipeline;
  private readonly boundsPipe: GPUComputePipeline;
  private readonly finishPipe: GPUComputePipeline;
  private readonly chunks: Chunk[] = [];
  private readonly buffers: GPUBuffer[] = [];
  private readonly cent: GPUBuffer; // [n, d]
  private readonly moves: GPUBuffer; // see movesTable
  private readonly cnt: GPUBuffer; // [chunks, cntStride / 4]: G + 1 list lengths
  /** Bytes between chunks' counters: a multiple of 256, which every offset alignment divides. */
  private readonly cntStride: number;
  private readonly zeros: GPUBuffer; // as cnt, all zero
  /** [iters] copies of cnt: each accelerated pass's list lengths, read once at the end. */
  private readonly hist: GPUBuffer | null;
  private histPasses = 0;
  /** The stats the history's entries complete, in order. */
  private histStats: PassStats[] = [];
  private readonly gap: Chunk | null; // the centroids as points, for s
  evals = 0;
  passes = 0;
  stats: PassStats[] = [];

  constructor(
    private readonly gpu: Gpu,
    private readonly N: number,
    private readonly d: number,
    private readonly n: number,
    private readonly accelerate: boolean,
    useGap: boolean,
    maxPoints: number,
    private readonly range: number,
    maxGroups: number,
    iters = 0,
  ) {
    this.P = pointsPerInvocation(d);
    const plan = planBuffers(d, n, gpu.limits.maxBinding, accelerate, maxGroups, maxPoints);
    this.G = plan.G;
    this.jn = plan.jn;
    const src = expandWgsl(code, { D: d, P: this.P, WG }, "kmeans.wgsl");
    const name = `kmeans_d${d}_p${this.P}_w${WG}`;
    this.scanPipe = gpu.pipeline(name, src, "scan");
    this.boundsPipe = gpu.pipeline(name, src, "bounds");
    this.finishPipe = gpu.pipeline(name, src, "finish");
    const mk = (bytes: number, label: string): GPUBuffer => {
      const b = gpu.createBuffer(bytes, label);
      this.buffers.push(b);
      return b;
    };
    const mkChunk = (row0: number, rows: number, groups: number, xb?: GPUBuffer): Chunk => ({
      row0,
      rows,
      groups,
      x: xb ?? mk(rows * d * 4, "kmeans.x"),
      list: mk(rows * (groups + 1) * 4, "kmeans.list"),
      code: mk(rows * 2 * 4, "kmeans.code"),
      st: mk(rows * 3 * 4, "kmeans.st"),
      lbs: mk(rows * groups * 4, "kmeans.lbs"),
    });
    for (let r0 = 0; r0 < N; r0 += plan.rowsPerChunk) {
      this.chunks.push(mkChunk(r0, Math.min(plan.rowsPerChunk, N - r0), this.G));
    }
    this.cent = mk(n * d * 4, "kmeans.centroids");
    this.moves = mk(plan.movesBytes, "kmeans.moves");
    this.cntStride = plan.cntStride;
    this.cnt = mk(this.chunks.length * this.cntStride, "kmeans.cnt");
    this.zeros = mk(this.chunks.length * this.cntStride, "kmeans.zeros");
    this.hist = accelerate
      ? mk(Math.max(1, iters) * this.chunks.length * this.cntStride, "kmeans.hist")
      : null;
    this.gap = accelerate && useGap ? mkChunk(0, n, 1, this.cent) : null;
  }

  async upload(x: Float32Array): Promise<void> {
    const d = this.d;
    for (const c of this.chunks) {
      await this.gpu.write(c.x, x.subarray(c.row0 * d, (c.row0 + c.rows) * d));
    }
  }

  release(): void {
    for (const b of this.buffers) this.gpu.releaseBuffer(b);
    this.buffers.length = 0;
  }

  /** Bindings 0 .. 6 and 9 (scan); `finish` takes 0 .. 4 and 9, `bounds` 0 .. 8. */
  private withCounts(b: Binding[]): Binding[] {
    const out: Binding[] = [...b];
    while (out.length < 9) out.push(null);
    out.push({ buffer: this.cnt, size: this.chunks.length * this.cntStride });
    return out;
  }

  private bindings(c: Chunk, params: number[]): Binding[] {
    return [
      new Uint32Array(params),
      { buffer: c.list, size: c.rows * (c.groups + 1) * 4 },
      { buffer: c.code, size: c.rows * 2 * 4 },
      { buffer: c.st, size: c.rows * 3 * 4 },
      { buffer: c.lbs, size: c.rows * c.groups * 4 },
      { buffer: c.x, size: c.rows * this.d * 4 },
      { buffer: this.cent, size: this.n * this.d * 4 },
    ];
  }

  /**
   * Scans centroids [lo, hi) for `count` points (rows, or list `list` if >= 0), in ranges that
   * stay inside one group and below `range` centroids.
   */
  private scan(c: Chunk, count: number, lo: number, hi: number, list: number, cidx = -1): void {
    if (count === 0) return;
    const [gx, gy] = grid(Math.ceil(count / (WG * this.P)), this.gpu.limits.maxWorkgroups);
    for (let g = 0; g < c.groups; g++) {
      const g0 = Math.max(lo, groupStart(g, this.n, c.groups));
      const g1 = Math.min(hi, groupStart(g + 1, this.n, c.groups));
      for (let c0 = g0; c0 < g1; c0 += this.range) {
        const c1 = Math.min(g1, c0 + this.range);
        const flags = (list >= 0 ? LISTED : 0) | (list < 0 && c0 === 0 ? FIRST : 0) |
          (cidx >= 0 ? GPUCOUNT : 0);
        const params = [count, c0, c1, flags, gx, this.n, c.groups, Math.max(0, list) * c.rows];
        this.gpu.dispatch(
          this.scanPipe,
          this.withCounts(this.bindings(c, [...params, c.rows, 0, Math.max(0, cidx)])),
          [gx, gy],
        );
      }
    }
    if (cidx < 0) this.evals += count * (hi - lo); // else counted from the history
  }

  /** Turns running states into assignments and bounds: rows, or list G's points. */
  private finish(c: Chunk, count: number, listed: boolean, cidx = -1): void {
    if (count === 0) return;
    const [gx, gy] = grid(Math.ceil(count / BOUNDS_WG), this.gpu.limits.maxWorkgroups);
    const flags = (listed ? LISTED : 0) | (cidx >= 0 ? GPUCOUNT : 0);
    const params = [count, 0, 0, flags, gx * BOUNDS_WG, this.n, c.groups];
    this.gpu.dispatch(
      this.finishPipe,
      this.withCounts(
        this.bindings(c, [...params, c.groups * c.rows, c.rows, 0, Math.max(0, cidx)]).slice(0, 5),
      ),
      [gx, gy],
    );
  }

  /** Every point of the chunk against every centroid; leaves bounds for the next pass. */
  private scanAll(c: Chunk): void {
    this.scan(c, c.rows, 0, this.n, -1);
    this.finish(c, c.rows, false);
  }

  /**
   * The `moves` table for `bounds` after centroids moved from `prev` to `cents` (see the shader):
   * [n] s (zero; the centroid gap pass fills it), [G] each group's largest movement outside J,
   * [G + 1] where each group's members of J start, [n, jn] lower bounds on |c_a - c_J[k]|. J is
   * the jn centroids that moved most (ties by lowest index), in index order. Movements are
   * rounded up to f32 and centroid distances down, so the bounds stay bounds.
   */
  private movesTable(cents: Float32Array, prev: Float32Array): Float32Array {
    const { n, d, G, jn } = this;
    const mv = new Float32Array(n);
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let k = 0; k < d; k++) {
        const t = cents[j * d + k] - prev[j * d + k];
        s += t * t;
      }
      mv[j] = roundUpF32(Math.sqrt(s));
    }
    const byMove = Array.from({ length: n }, (_, j) => j);
    byMove.sort((a, b) => mv[b] - mv[a] || a - b);
    const J = byMove.slice(0, jn).sort((a, b) => a - b);
    const inJ = new Uint8Array(n);
    for (const j of J) inJ[j] = 1;
    const t = new Float32Array(n + 2 * G + 1 + n * jn);
    const drift = n, js = n + G, cj = n + 2 * G + 1;
    let k = 0;
    for (let g = 0; g < G; g++) {
      const lo = groupStart(g, n, G), hi = groupStart(g + 1, n, G);
      let m = 0;
      for (let j = lo; j < hi; j++) if (!inJ[j]) m = Math.max(m, mv[j]);
      t[drift + g] = m;
      t[js + g] = k;
      while (k < jn && J[k] < hi) k++;
    }
    t[js + G] = jn;
    for (let a = 0; a < n; a++) {
      for (let q = 0; q < jn; q++) {
        const j = J[q];
        let s = 0;
        for (let e = 0; e < d; e++) {
          const v = cents[a * d + e] - cents[j * d + e];
          s += v * v;
        }
        t[cj + a * jn + q] = a === j ? BIG : roundDownF32(Math.sqrt(s));
      }
    }
    return t;
  }

  /** Assigns every point to its nearest centroid of `cents`; `prev` is the last assignment's. */
  async assign(cents: Float32Array, prev: Float32Array | null): Promise<Uint32Array> {
    const { gpu, n, G } = this;
    await gpu.write(this.cent, cents);
    this.passes++;
    const before = this.evals;
    const stat: PassStats = { active: 0, listed: 0, evals: 0 };
    if (!this.accelerate || prev === null) {
      for (const c of this.chunks) this.scanAll(c);
      stat.active = this.N;
      stat.listed = this.N * G;
    } else {
      const moves = this.movesTable(cents, prev);
      await gpu.write(this.moves, moves);
      if (this.gap) {
        this.scanAll(this.gap);
        gpu.copy(this.gap.lbs, 0, this.moves, 0, n * 4);
      }
      gpu.copy(this.zeros, 0, this.cnt, 0, this.chunks.length * this.cntStride);
      for (let i = 0; i < this.chunks.length; i++) {
        const c = this.chunks[i];
        const [gx, gy] = grid(Math.ceil(c.rows / BOUNDS_WG), gpu.limits.maxWorkgroups);
        const params = [c.rows, 0, 0, 0, gx * BOUNDS_WG, n, c.groups, 0, c.rows, this.jn];
        gpu.dispatch(this.boundsPipe, [
          ...this.bindings(c, params),
          { buffer: this.moves, size: moves.byteLength },
          { buffer: this.cnt, offset: i * this.cntStride, size: (G + 1) * 4 },
        ], [gx, gy]);
      }
      // The list lengths stay on the GPU: each group's scan is sized for every row and reads
      // its count there (whole workgroups past it return at once); they are copied to the
      // history and read back once, at the end (one readback per pass: the codes).
      for (let i = 0; i < this.chunks.length; i++) {
        const c = this.chunks[i];
        const at = (i * this.cntStride) / 4;
        for (let g = 0; g < G; g++) {
          this.scan(c, c.rows, groupStart(g, n, G), groupStart(g + 1, n, G), g, at + g);
        }
        this.finish(c, c.rows, true, at + G);
      }
      const bytes = this.chunks.length * this.cntStride;
      if (this.hist && (this.histPasses + 1) * bytes <= this.hist.size) {
        gpu.copy(this.cnt, 0, this.hist, this.histPasses * bytes, bytes);
        this.histPasses++;
        this.histStats.push(stat);
      } else {
        // More passes than planned for (not kmeans()'s case): read the counts now.
        this.addCounts(new Uint32Array(await gpu.read(this.cnt, 0, bytes)), stat);
      }
      this.evals += this.N; // the exact distance of each point to its centroid
    }
    const codes = new Uint32Array(this.N);
    for (const c of this.chunks) {
      codes.set(new Uint32Array(await gpu.read(c.code, 0, c.rows * 4)), c.row0);
    }
    stat.evals = this.evals - before;
    this.stats.push(stat);
    return codes;
  }

  /** Adds one pass's list lengths (as in cnt) to its stats and to evals. */
  private addCounts(counts: Uint32Array, stat: PassStats): void {
    const { n, G } = this;
    for (let i = 0; i < this.chunks.length; i++) {
      const at = (i * this.cntStride) / 4;
      for (let g = 0; g < G; g++) {
        const e = counts[at + g] * (groupStart(g + 1, n, G) - groupStart(g, n, G));
        this.evals += e;
        stat.evals += e;
        stat.listed += counts[at + g];
      }
      stat.active += counts[at + G];
    }
  }

  /** Reads the count history once and completes the accelerated passes' stats and evals. */
  async settle(): Promise<void> {
    if (!this.hist || this.histPasses === 0) return;
    const bytes = this.chunks.length * this.cntStride;
    const all = new Uint32Array(await this.gpu.read(this.hist, 0, this.histPasses * bytes));
    for (let p = 0; p < this.histPasses; p++) {
      this.addCounts(all.subarray((p * bytes) / 4, ((p + 1) * bytes) / 4), this.histStats[p]);
    }
    this.histPasses = 0;
    this.histStats = [];
  }
}

/**
 * Nearest centroid of each point of x [N, d] among `centroids` [n, d] (one brute-force pass on
 * the GPU, ties to the lowest index), for tests and tools.
 */
export async function assignNearest(
  gpu: Gpu,
  x: Float32Array,
  N: number,
  d: number,
  centroids: Float32Array,
  n: number,
  opts: Pick<KmeansOptions, "maxPointsPerDispatch" | "maxCentroidsPerDispatch" | "maxGroups"> = {},
): Promise<Uint32Array> {
  checkArgs(gpu, x, N, d, n);
  const { maxPoints, range, maxGroups } = planOptions(opts, n);
  const a = new Assigner(gpu, N, d, n, false, false, maxPoints, range, maxGroups);
  try {
    await a.upload(x);
    return await a.assign(centroids, null);
  } finally {
    a.release();
  }
}

function checkArgs(gpu: Gpu, x: Float32Array, N: number, d: number, n: number): void {
  if (!Number.isInteger(d) || d < 1 || d > 16) throw new Error(`kmeans: d = ${d} not in 1..16`);
  if (!Number.isInteger(N) || !Number.isInteger(n) || N < 1 || n < 1) {
    throw new Error(`kmeans: N = ${N} and n = ${n} must be positive integers`);
  }
  if (x.length < N * d) throw new Error(`kmeans: x holds ${x.length} values, not N * d = ${N * d}`);
  if (n * d * 4 > gpu.limits.maxBinding) {
    throw new Error(`kmeans: ${n} centroids of ${d} floats exceed one storage binding`);
  }
}

function checkWeights(w: Float32Array, N: number): void {
  if (!(w instanceof Float32Array) || w.length !== N) {
    throw new Error(`kmeans: weights must be a Float32Array of N = ${N} values (got ${w?.length})`);
  }
  for (let i = 0; i < N; i++) {
    if (!(w[i] >= 0) || w[i] === Infinity) {
      throw new Error(`kmeans: weights[${i}] = ${w[i]} is not a finite non-negative number`);
    }
  }
}

function planOptions(opts: KmeansOptions, n: number) {
  return {
    maxPoints: Math.max(1, Math.floor(opts.maxPointsPerDispatch ?? Infinity)),
    range: Math.max(1, Math.min(Math.floor(opts.maxCentroidsPerDispatch ?? 16_384), MAX_RANGE)),
    maxGroups: opts.maxGroups ?? defaultMaxGroups(n),
  };
}

/**
 * Lloyd's k-means of x [N, d] into n centroids (squared L2), exact: codes and centroids are those
 * of brute-force Lloyd from the same initialisation (up to exact f32 ties), whether or not the
 * bounds are used. Runs the initial assignment, then up to `iters` update + assignment rounds,
 * stopping early when an update leaves the centroids bit-identical (a fixed point). The codes
 * returned are the assignment to the returned centroids.
 */
export async function kmeans(
  gpu: Gpu,
  x: Float32Array,
  N: number,
  d: number,
  n: number,
  opts: KmeansOptions = {},
): Promise<KmeansResult> {
  checkArgs(gpu, x, N, d, n);
  if (N < n) throw new Error(`kmeans: ${n} centroids need at least as many points (N = ${N})`);
  const iters = opts.iters ?? 20;
  const accelerate = opts.accelerate ?? true;
  const { maxPoints, range, maxGroups } = planOptions(opts, n);
  const useGap = opts.centroidGap ?? false;
  const w = opts.weights;
  if (w !== undefined) checkWeights(w, N);

  let cents = initCentroids(x, N, d, n, opts.seed ?? 0, opts.init ?? "random", w);
  const backend = opts.backend ?? "gpu";
  const host = backend === "host" || (backend === "auto" && N * n * d <= HOST_MAX_WORK);
  const a = host
    ? new HostAssigner(x, N, d, n, accelerate)
    : usesTree(d, n, opts)
    ? new TreeAssigner(gpu, N, d, n, maxPoints)
    : new Assigner(gpu, N, d, n, accelerate, useGap, maxPoints, range, maxGroups, iters);
  try {
    if (!(a instanceof HostAssigner)) await a.upload(x);
    let codes = await a.assign(cents, null);
    let objective = sse(x, N, d, cents, codes, w);
    opts.onIter?.(0, objective);
    let iterations = 0;
    while (iterations < iters) {
      const next = updateCentroids(x, N, d, n, codes, cents, w);
      if (sameBits(next, cents)) break;
      codes = await a.assign(next, cents);
      cents = next;
      iterations++;
      objective = sse(x, N, d, cents, codes, w);
      opts.onIter?.(iterations, objective);
    }
    if (!(a instanceof HostAssigner)) await a.settle();
    opts.onStats?.(a.stats);
    return {
      centroids: cents,
      codes,
      objective,
      sse: w ? sse(x, N, d, cents, codes) : objective,
      iterations,
      distanceEvals: a.evals,
      bruteForceEvals: a.passes * N * n,
    };
  } finally {
    if (!(a instanceof HostAssigner)) a.release();
  }
}
