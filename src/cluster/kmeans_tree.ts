// The k-d tree assignment for k-means (exact; shaders/kmeans_tree.wgsl): for small d, where a
// spatial index prunes far more than group bounds.
//
// Once per run the points are split (median splits along the widest dimension) into tiles of
// WG * P points, compact boxes that one workgroup assigns together. Each pass the host builds a
// balanced k-d tree over the current centroids (O(n d log n)), takes for each point a known
// centroid g (its previous assignment; on the first pass, its nearest among a few centroids near
// its tile, found by a first GPU scan of short lists; see guess), and lists for each tile the
// centroids c whose distance to the tile's box is at most U, the largest |x - c_g| over the
// tile's points. The nearest centroid c* of a point of the tile satisfies
// |c* - box| <= |c* - x| <= |x - c_g| <= U, so it is listed. The test is made in f64 with the
// margin U^2 (1 + 1e-5) + 1e-30: a centroid left out is farther than g by more than the f32
// evaluation error (relative (d + 3) 2^-24 < 1.3e-6 on squares, plus flushed subnormals), so its
// f32 distance is strictly above g's and can neither beat nor tie brute force's pick. The GPU
// scans each tile's list with every lane reading the same candidate (the fast, uniform pattern
// of the brute-force scan) and keeps the smallest f32 distance, ties to the lowest index: brute
// force's codes exactly. Codes are read back once per pass (the host update needs them; so do
// the next pass's bounds).
//
// Counted as distance evaluations: every point-candidate pair the GPU computes (padding lanes
// included), the host's |x - c_g| per point, and every box test of the host's searches.
import code from "../../shaders/kmeans_tree.wgsl" with { type: "text" };
import { type Gpu, grid } from "../gpu/device.ts";
import { expandWgsl } from "../gpu/template.ts";

/** Counts of one assignment pass (for tests and benchmarks). */
export interface PassStats {
  /** Points scanned against at least one group (tree: every point). */
  active: number;
  /** Point-group scans (tree: candidate centroids listed, summed over tiles). */
  listed: number;
  evals: number;
}

const WG = 8;
/** Slices of a chunk's tiles per pass (host listing overlaps the GPU's scanning). */
const SLICES = 8;
/** Slots per sub-block of a tile (the first pass's guesses). */
const SUB = 16;
/** Centroids per leaf of the host's tree. */
const LEAF = 8;
/** Most centroids the tree path takes (the scan loop runs at most n / 2 trips). */
export const TREE_MAX_N = 120_000;
/** Most candidate indices uploaded per dispatch batch (16 MiB). */
const CAND_CAP = 1 << 22;
const REL = 1e-5, ABS = 1e-30;

/** Points each invocation holds (registers): fewer for larger d. */
function pointsPerInvocation(d: number): number {
  return d <= 4 ? 16 : 8;
}

/** Slots per tile: one workgroup's points. */
export function tileSize(d: number): number {
  return WG * pointsPerInvocation(d);
}

/** Whether the tree assignment handles (d, n). */
export function treeSupports(d: number, n: number): boolean {
  return d <= 8 && n <= TREE_MAX_N;
}

/** Reorders ids[lo, hi) so that ids[k] holds the k-th smallest key, smaller ones before it. */
function select(ids: Int32Array, key: Float64Array, lo: number, hi: number, k: number): void {
  let l = lo, r = hi - 1;
  while (l < r) {
    const m = (l + r) >> 1;
    const a = key[ids[l]], b = key[ids[m]], c = key[ids[r]];
    const pivot = a < b ? (b < c ? b : a < c ? c : a) : (a < c ? a : b < c ? c : b);
    let i = l, j = r;
    while (i <= j) {
      while (key[ids[i]] < pivot) i++;
      while (key[ids[j]] > pivot) j--;
      if (i <= j) {
        const t = ids[i];
        ids[i] = ids[j];
        ids[j] = t;
        i++;
        j--;
      }
    }
    if (k <= j) r = j;
    else if (k >= i) l = i;
    else return;
  }
}

/**
 * Splits the m points v [m, d] into `parts` groups by median splits along the widest dimension
 * (group counts halved at each split, points in proportion), so group g holds
 * ids[start[g] .. start[g + 1]) and every group about m / parts points. With parts a power of
 * two, the groups are the leaves of a complete binary tree in order. With `unit` (parts a
 * multiple of it), counts above it are split in multiples of it, so each run of `unit` groups
 * from a multiple of `unit` on is one subtree: a compact cell of its own.
 */
export function kdGroups(
  v: Float32Array,
  m: number,
  d: number,
  parts: number,
  unit = 1,
): { ids: Int32Array; start: Int32Array } {
  if (parts % unit !== 0) throw new Error(`kdGroups: ${parts} parts are not in units of ${unit}`);
  const ids = Int32Array.from({ length: m }, (_, i) => i);
  const start = new Int32Array(parts + 1);
  start[parts] = m;
  const key = new Float64Array(m);
  const stack: number[] = [0, m, 0, parts];
  while (stack.length > 0) {
    const tn = stack.pop()!, t0 = stack.pop()!, hi = stack.pop()!, lo = stack.pop()!;
    start[t0] = lo;
    if (tn === 1) continue;
    const tl = tn > unit ? unit * Math.floor(tn / unit / 2) : tn >> 1;
    const mid = lo + Math.floor(((hi - lo) * tl) / tn);
    let dim = 0, widest = -1;
    for (let k = 0; k < d; k++) {
      let min = Infinity, max = -Infinity;
      for (let i = lo; i < hi; i++) {
        const x = v[ids[i] * d + k];
        if (x < min) min = x;
        if (x > max) max = x;
      }
      if (max - min > widest) {
        widest = max - min;
        dim = k;
      }
    }
    if (hi - lo > 1 && mid > lo && mid < hi) {
      for (let i = lo; i < hi; i++) key[ids[i]] = v[ids[i] * d + dim];
      select(ids, key, lo, hi, mid);
    }
    stack.push(lo, mid, t0, tl, mid, hi, t0 + tl, tn - tl);
  }
  return { ids, start };
}

/** Bounding box [2, d] (lo, then hi) of v's rows ids[lo .. hi), into box at `at`. */
function boundBox(
  v: Float32Array,
  d: number,
  ids: Int32Array,
  lo: number,
  hi: number,
  box: Float64Array,
  at: number,
): void {
  for (let k = 0; k < d; k++) {
    box[at + k] = Infinity;
    box[at + d + k] = -Infinity;
  }
  for (let i = lo; i < hi; i++) {
    const o = ids[i] * d;
    for (let k = 0; k < d; k++) {
      const x = v[o + k];
      if (x < box[at + k]) box[at + k] = x;
      if (x > box[at + d + k]) box[at + d + k] = x;
    }
  }
}

/** A complete k-d tree over the centroids: leaves of <= LEAF centroids, node boxes in f64. */
interface CentroidTree {
  leaves: number;
  ids: Int32Array;
  start: Int32Array;
  /** [2L, 2, d]: node k's box at 2 k d (node 1 the root, k's children 2k and 2k + 1). */
  box: Float64Array;
}

function buildTree(c: Float32Array, n: number, d: number): CentroidTree {
  let L = 1;
  while (L * LEAF < n) L *= 2;
  const { ids, start } = kdGroups(c, n, d, L);
  const box = new Float64Array(2 * L * 2 * d);
  for (let l = 0; l < L; l++) boundBox(c, d, ids, start[l], start[l + 1], box, 2 * (L + l) * d);
  for (let k = L - 1; k >= 1; k--) {
    const a = 4 * k * d, b = a + 2 * d, o = 2 * k * d;
    for (let j = 0; j < d; j++) {
      box[o + j] = Math.min(box[a + j], box[b + j]);
      box[o + d + j] = Math.max(box[a + d + j], box[b + d + j]);
    }
  }
  return { leaves: L, ids, start, box };
}

/** Squared distance from point v[o .. o + d) to box b (at bo). */
function pointGap2(v: Float32Array, o: number, b: Float64Array, bo: number, d: number): number {
  let s = 0;
  for (let k = 0; k < d; k++) {
    const x = v[o + k];
    const g = Math.max(0, b[bo + k] - x, x - b[bo + d + k]);
    s += g * g;
  }
  return s;
}

function dist2(a: Float32Array, ao: number, b: Float32Array, bo: number, d: number): number {
  let s = 0;
  for (let k = 0; k < d; k++) {
    const t = a[ao + k] - b[bo + k];
    s += t * t;
  }
  return s;
}

interface TileChunk {
  /** First tile and tile count. */
  t0: number;
  tiles: number;
  x: GPUBuffer; // [tiles * TP, d]
  code: GPUBuffer; // [tiles * TP]
}

/** Sizes of a tree run's GPU state (shared by TreeAssigner and treeGpuBytes). */
function planTiles(N: number, d: number, n: number, maxBinding: number, maxPoints: number) {
  const TP = tileSize(d);
  const tiles = Math.ceil(N / TP);
  const fit = Math.floor(Math.min(maxPoints, Math.floor(maxBinding / (4 * d))) / TP);
  const perChunk = Math.max(1, fit);
  // No pass lists more than every centroid for every tile.
  const cap = Math.min(CAND_CAP, Math.floor(maxBinding / 4), tiles * n);
  return { TP, tiles, perChunk, cap };
}

/** GPU bytes a TreeAssigner allocates. */
export function treeGpuBytes(
  N: number,
  d: number,
  n: number,
  maxBinding: number,
  maxPoints: number,
): number {
  const { TP, tiles, perChunk, cap } = planTiles(N, d, n, maxBinding, maxPoints);
  return tiles * TP * (d + 1) * 4 + n * d * 4 + cap * 4 + (Math.min(perChunk, tiles) + 1) * 4;
}

/** GPU state of one tree-assigned k-means run. */
export class TreeAssigner {
  evals = 0;
  passes = 0;
  stats: PassStats[] = [];
  private readonly TP: number;
  private readonly tiles: number;
  private readonly cap: number;
  private readonly pipe: GPUComputePipeline;
  private readonly chunks: TileChunk[] = [];
  private readonly buffers: GPUBuffer[] = [];
  private readonly cent: GPUBuffer;
  private readonly cand: GPUBuffer;
  private readonly toff: GPUBuffer;
  /** [tiles * TP]: the point in each slot, -1 for padding. */
  private slot = new Int32Array(0);
  /** [tiles, 2, d]: each tile's bounding box. */
  private tbox = new Float64Array(0);
  /** [tiles * TP, d]: the points by slot (zeros for padding), as on the GPU. */
  private xs = new Float32Array(0);
  /** [tiles * TP]: the last pass's codes by slot; null before the first pass. */
  private last: Uint32Array | null = null;

  constructor(
    private readonly gpu: Gpu,
    private readonly N: number,
    private readonly d: number,
    private readonly n: number,
    maxPoints: number,
    /** Candidate indices per dispatch batch (tests lower it). */
    cap?: number,
  ) {
    if (!treeSupports(d, n)) throw new Error(`kmeans tree: d = ${d}, n = ${n} not supported`);
    const plan = planTiles(N, d, n, gpu.limits.maxBinding, maxPoints);
    this.TP = plan.TP;
    this.tiles = plan.tiles;
    this.cap = Math.max(1, Math.min(plan.cap, cap ?? Infinity));
    const P = pointsPerInvocation(d);
    const src = expandWgsl(code, { D: d, P, WG }, "kmeans_tree.wgsl");
    this.pipe = gpu.pipeline(`kmeans_tree_d${d}_p${P}_w${WG}`, src, "tiles");
    const mk = (bytes: number, label: string): GPUBuffer => {
      const b = gpu.createBuffer(bytes, label);
      this.buffers.push(b);
      return b;
    };
    for (let t0 = 0; t0 < this.tiles; t0 += plan.perChunk) {
      const tiles = Math.min(plan.perChunk, this.tiles - t0);
      this.chunks.push({
        t0,
        tiles,
        x: mk(tiles * this.TP * d * 4, "kmeans_tree.x"),
        code: mk(tiles * this.TP * 4, "kmeans_tree.code"),
      });
    }
    this.cent = mk(n * d * 4, "kmeans_tree.centroids");
    this.cand = mk(this.cap * 4, "kmeans_tree.cand");
    this.toff = mk((Math.min(plan.perChunk, this.tiles) + 1) * 4, "kmeans_tree.toff");
  }

  /** Cuts the points into tiles and uploads them by slot. */
  async upload(x: Float32Array): Promise<void> {
    const { N, d, TP, tiles } = this;
    // Tiles of TP / SUB cells of at most SUB points each (N <= tiles * TP), cell c of tile t
    // at slots t TP + c SUB ..: the first pass's guesses go by cell.
    const cells = TP / SUB;
    const { ids, start } = kdGroups(x, N, d, tiles * cells, cells);
    this.slot = new Int32Array(tiles * TP).fill(-1);
    this.tbox = new Float64Array(tiles * 2 * d);
    for (let g = 0; g < tiles * cells; g++) {
      for (let i = start[g]; i < start[g + 1]; i++) this.slot[g * SUB + i - start[g]] = ids[i];
    }
    for (let t = 0; t < tiles; t++) {
      boundBox(x, d, ids, start[t * cells], start[(t + 1) * cells], this.tbox, t * 2 * d);
    }
    this.xs = new Float32Array(tiles * TP * d);
    for (let s = 0; s < tiles * TP; s++) {
      const i = this.slot[s];
      if (i >= 0) this.xs.set(x.subarray(i * d, i * d + d), s * d);
    }
    for (const c of this.chunks) {
      await this.gpu.write(c.x, this.xs.subarray(c.t0 * TP * d, (c.t0 + c.tiles) * TP * d));
    }
  }

  release(): void {
    for (const b of this.buffers) this.gpu.releaseBuffer(b);
    this.buffers.length = 0;
  }

  /** Each tile's U^2 = max |x - c_g|^2 over its points, g the last pass's code: tiles [t0, t1). */
  private bounds(cents: Float32Array, t0: number, t1: number, stat: PassStats): Float64Array {
    const { d, TP, xs, slot } = this;
    const last = this.last!;
    const u2 = new Float64Array(t1 - t0);
    for (let t = t0; t < t1; t++) {
      let m = 0;
      for (let s = t * TP; s < (t + 1) * TP; s++) {
        if (slot[s] < 0) continue;
        const e = dist2(xs, s * d, cents, last[s] * d, d);
        if (e > m) m = e;
      }
      stat.evals += TP;
      u2[t - t0] = m;
    }
    return u2;
  }

  /**
   * The first pass's known centroids: each tile scans (on the GPU) the centroids of the leaves
   * (and their siblings) that greedy descents towards the means of its SUB-slot cells reach;
   * each point's nearest among them becomes its g.
   */
  private async guess(tree: CentroidTree, stat: PassStats): Promise<void> {
    const { d, TP, tiles, xs, slot } = this;
    const centre = new Float32Array(d);
    const leaves: number[] = [];
    let list = new Uint32Array(tiles * (TP / SUB) * 2 * LEAF);
    const off = new Uint32Array(tiles + 1);
    let used = 0;
    for (let t = 0; t < tiles; t++) {
      leaves.length = 0;
      for (let s0 = t * TP; s0 < (t + 1) * TP; s0 += SUB) {
        centre.fill(0);
        let count = 0;
        for (let s = s0; s < s0 + SUB; s++) {
          if (slot[s] < 0) continue;
          for (let k = 0; k < d; k++) centre[k] += xs[s * d + k];
          count++;
        }
        if (count === 0) continue;
        for (let k = 0; k < d; k++) centre[k] /= count;
        let node = 1;
        while (node < tree.leaves) {
          const a = pointGap2(centre, 0, tree.box, 2 * (2 * node) * d, d);
          const b = pointGap2(centre, 0, tree.box, 2 * (2 * node + 1) * d, d);
          stat.evals += 2;
          node = b < a ? 2 * node + 1 : 2 * node;
        }
        // The leaf and its sibling (the root has none).
        for (const v of node > 1 ? [node, node ^ 1] : [node]) {
          if (!leaves.includes(v)) leaves.push(v);
        }
      }
      for (const node of leaves) {
        const l = node - tree.leaves;
        for (let j = tree.start[l]; j < tree.start[l + 1]; j++) list[used++] = tree.ids[j];
      }
      off[t + 1] = used;
    }
    list = list.subarray(0, used);
    this.last = new Uint32Array(tiles * TP);
    for (const c of this.chunks) {
      const rel = Uint32Array.from(off.subarray(c.t0, c.t0 + c.tiles + 1), (v) => v - off[c.t0]);
      await this.scan(c, 0, list.subarray(off[c.t0], off[c.t0 + c.tiles]), rel, stat);
      await this.gather(c, null);
    }
  }

  /**
   * Scans tiles [c.t0 + s0, ...) of chunk c against their lists (offsets `off` relative to the
   * list), in batches that fit the candidate buffer; submits without waiting.
   */
  private async scan(
    c: TileChunk,
    s0: number,
    list: Uint32Array,
    off: Uint32Array,
    stat: PassStats,
  ): Promise<void> {
    const { gpu, n, d, TP } = this;
    const tiles = off.length - 1;
    for (let b0 = 0; b0 < tiles;) {
      let b1 = b0 + 1;
      while (b1 < tiles && off[b1 + 1] - off[b0] <= this.cap) b1++;
      const count = off[b1] - off[b0];
      if (count > this.cap) {
        throw new Error(`kmeans tree: one tile lists ${count} > ${this.cap} centroids`);
      }
      if (count > 0) await gpu.write(this.cand, list.subarray(off[b0], off[b1]));
      await gpu.write(this.toff, Uint32Array.from(off.subarray(b0, b1 + 1), (v) => v - off[b0]));
      const [gx, gy] = grid(b1 - b0, gpu.limits.maxWorkgroups);
      gpu.dispatch(this.pipe, [
        new Uint32Array([b1 - b0, gx, s0 + b0, c.tiles * TP]),
        { buffer: c.code, size: c.tiles * TP * 4 },
        { buffer: c.x, size: c.tiles * TP * d * 4 },
        { buffer: this.cent, size: n * d * 4 },
        { buffer: this.cand, size: Math.max(4, count * 4) },
        { buffer: this.toff, size: (b1 - b0 + 1) * 4 },
      ], [gx, gy]);
      await gpu.flush();
      stat.listed += count;
      stat.evals += count * TP;
      b0 = b1;
    }
  }

  /** Reads chunk c's codes into the slot-ordered `last` and, when given, `codes` (point order). */
  private async gather(c: TileChunk, codes: Uint32Array | null): Promise<void> {
    const { TP } = this;
    const got = new Uint32Array(await this.gpu.read(c.code, 0, c.tiles * TP * 4));
    this.last!.set(got, c.t0 * TP);
    if (!codes) return;
    for (let s = 0; s < c.tiles * TP; s++) {
      const i = this.slot[c.t0 * TP + s];
      if (i >= 0) codes[i] = got[s];
    }
  }

  /** The candidates of tiles [t0, t1) (see the header): lists and offsets [t1 - t0 + 1]. */
  private candidates(
    cents: Float32Array,
    tree: CentroidTree,
    t0: number,
    t1: number,
    u2: Float64Array,
    stat: PassStats,
  ): { list: Uint32Array; off: Uint32Array } {
    const { d, tbox } = this;
    const { box, leaves, ids, start } = tree;
    let list = new Uint32Array(Math.max(1024, (t1 - t0) * 64));
    const off = new Uint32Array(t1 - t0 + 1);
    let used = 0, tests = 0;
    const stack = new Int32Array(64);
    const lo = new Float64Array(d), hi = new Float64Array(d);
    for (let t = t0; t < t1; t++) {
      const limit = u2[t - t0] * (1 + REL) + ABS;
      for (let k = 0; k < d; k++) {
        lo[k] = tbox[t * 2 * d + k];
        hi[k] = tbox[t * 2 * d + d + k];
      }
      let sp = 0;
      stack[sp++] = 1;
      while (sp > 0) {
        const node = stack[--sp];
        tests++;
        // Squared gap between the node's box and the tile's.
        const o = 2 * node * d;
        let g2 = 0;
        for (let k = 0; k < d; k++) {
          let g = box[o + k] - hi[k];
          if (g < 0) {
            g = lo[k] - box[o + d + k];
            if (g < 0) continue;
          }
          g2 += g * g;
        }
        if (g2 > limit) continue;
        if (node < leaves) {
          stack[sp++] = 2 * node + 1;
          stack[sp++] = 2 * node;
          continue;
        }
        const l = node - leaves;
        for (let i = start[l]; i < start[l + 1]; i++) {
          const id = ids[i], c = id * d;
          tests++;
          let e2 = 0;
          for (let k = 0; k < d; k++) {
            const v = cents[c + k];
            let g = v - hi[k];
            if (g < 0) {
              g = lo[k] - v;
              if (g < 0) continue;
            }
            e2 += g * g;
          }
          if (e2 > limit) continue;
          if (used === list.length) {
            const grown = new Uint32Array(list.length * 2);
            grown.set(list);
            list = grown;
          }
          list[used++] = id;
        }
      }
      off[t - t0 + 1] = used;
    }
    stat.evals += tests;
    return { list: list.subarray(0, used), off };
  }

  /** Assigns every point to its nearest centroid of `cents` (the first pass when prev is null). */
  async assign(cents: Float32Array, prev: Float32Array | null): Promise<Uint32Array> {
    const { gpu, n, d } = this;
    if (prev === null) this.last = null;
    this.passes++;
    const stat: PassStats = { active: this.N, listed: 0, evals: 0 };
    const tree = buildTree(cents, n, d);
    await gpu.write(this.cent, cents);
    if (!this.last) await this.guess(tree, stat);
    const codes = new Uint32Array(this.N);
    for (const c of this.chunks) {
      // Slices of tiles: the GPU scans one slice while the host lists the next.
      const slice = Math.ceil(c.tiles / SLICES);
      for (let s0 = c.t0; s0 < c.t0 + c.tiles; s0 += slice) {
        const s1 = Math.min(c.t0 + c.tiles, s0 + slice);
        const u2 = this.bounds(cents, s0, s1, stat);
        const { list, off } = this.candidates(cents, tree, s0, s1, u2, stat);
        await this.scan(c, s0 - c.t0, list, off, stat);
      }
      await this.gather(c, codes);
    }
    this.evals += stat.evals;
    this.stats.push(stat);
    return codes;
  }

  /** Nothing pending: every pass's counts are known on the host. */
  settle(): Promise<void> {
    return Promise.resolve();
  }
}
