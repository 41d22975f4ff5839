// K-means (squared L2): nearest-centroid scans over centroid ranges, and the bound filter
// (exact distance to the current centroid, Yinyang's lower bound per centroid group carried
// between iterations, per-centroid bounds for the fastest movers) that decides which points need
// which groups scanned.
//
// This file is a template that src/cluster/kmeans.ts expands once per (D, P, WG): `${D}`, `${P}`
// and `${WG}` become the vector dimension, the points each scan invocation holds and the scan
// workgroup size; the lines between `//#for j < P` and `//#end` repeat for j = 0 .. P-1 with
// `${j}` replaced (likewise `//#for k < D`). Why not override constants and loops: WGSL forbids
// override-sized arrays in function scope, and Mesa's llvmpipe neither unrolls a 64-trip point
// loop (kept as a loop it ran at 0.4 G distances/s) nor lets an invocation run more than 65,535
// loop iterations in total, nested loops included. Unrolled, the P points and their running
// minima stay in registers and the centroid loop is the only loop in `scan`, so one dispatch
// could scan ~65,000 centroids (the host keeps each range far below that).
//
// Centroid groups: group g is the index range [floor(g n / G), floor((g + 1) n / G)).
// Per point (row q of a chunk; arrays are [k, rows], so lane-adjacent rows are adjacent):
//   code[q]        running best centroid I (after `finish`: the assignment)
//   code[rows + q] the previous assignment a, bit 31 set when a's group is being scanned
//   st[q]          running best squared distance B
//   st[rows + q]   running second-best squared distance S
//   st[2rows + q]  squared distance to a (computed by `bounds`)
//   lbs[g rows + q] lower bound on the distance to every centroid of group g other than the
//                  assignment (while group g is being scanned: its running squared minimum)
// Ties go to the lowest centroid index: a point meets the scanned centroids in increasing index
// order and only a strictly smaller distance replaces the best; `finish` merges the previous
// centroid (when its group was not scanned) with the same rule.

const D: u32 = ${D}u;
const WG: u32 = ${WG}u;
const BIG: f32 = 3.40282346e38; // f32 max; Tint rejects 3.40282347e38 (past f32 max)
const OWN: u32 = 0x80000000u;
// Rounding guards for bounds made from f32 distances: the squared distance of D <= 16 terms has
// relative error below (D + 3) * 2^-24 < 1.2e-6, its sqrt half that; REL covers it three times
// over. ABS covers flushed subnormals. DRIFT covers one f32 add or subtract when a bound moves.
const REL: f32 = 4e-6;
const ABS: f32 = 1e-18;
const DRIFT: f32 = 1e-6;
// Flags.
const FIRST: u32 = 1u;  // scan: the points' first range, start from no candidate
const LISTED: u32 = 2u; // points come from list[p.loff ..], not rows 0 .. count-1
const GPUCOUNT: u32 = 4u; // scan, finish: the count is min(p.count, gcnt[p.cidx]), set on the GPU

struct Params {
  count: u32,  // points to process: slots (scan, finish) or rows (bounds)
  c0: u32,     // scan: first centroid of the range
  c1: u32,     // scan: one past the last centroid of the range
  flags: u32,  // FIRST | LISTED
  stride: u32, // workgroups (scan) or invocations (bounds, finish) along x of the 2-D grid
  n: u32,      // centroids
  groups: u32, // centroid groups G
  loff: u32,   // scan, finish: offset of the point list in `list`
  rows: u32,   // rows of the chunk
  jn: u32,     // bounds: centroids in J (bounded one by one)
  cidx: u32,   // scan, finish with GPUCOUNT: index of the count in gcnt
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> list: array<u32>;   // [G + 1, rows] active lists
@group(0) @binding(2) var<storage, read_write> code: array<u32>;   // [2, rows] I; a | OWN
@group(0) @binding(3) var<storage, read_write> st: array<f32>;     // [3, rows] B; S; e(a)
@group(0) @binding(4) var<storage, read_write> lbs: array<f32>;    // [G, rows] group bounds
@group(0) @binding(5) var<storage, read> x: array<f32>;            // [rows, D] points
@group(0) @binding(6) var<storage, read> cent: array<f32>;         // [n, D] centroids
@group(0) @binding(7) var<storage, read> moves: array<f32>;        // [n + 2G + 1 + n jn]: s;
                    // group drift outside J; J's start in each group (integers); lower bounds
                    // on |c_a - c_J[k]| [n, jn]
@group(0) @binding(8) var<storage, read_write> cnt: array<atomic<u32>>; // [G + 1] list lengths
@group(0) @binding(9) var<storage, read> gcnt: array<u32>;         // the same counts, read
                    // by scan and finish (GPUCOUNT), so the host need not read them back

/** Points this scan or finish dispatch processes. */
fn count() -> u32 {
  if ((p.flags & GPUCOUNT) != 0u) {
    return min(p.count, gcnt[p.cidx]);
  }
  return p.count;
}

/** An upper bound on the true distance whose squared f32 evaluation is e. */
fn upper(e: f32) -> f32 {
  return sqrt(e) * (1.0 + REL) + ABS;
}

/** A lower bound on the true distance whose squared f32 evaluation is e. */
fn lower(e: f32) -> f32 {
  return sqrt(e) * (1.0 - REL) - ABS;
}

/** First centroid of group g. */
fn group_start(g: u32) -> u32 {
  return (g * p.n) / p.groups;
}

/** The group of centroid c: the g with group_start(g) <= c < group_start(g + 1). */
fn group_of(c: u32) -> u32 {
  return ((c + 1u) * p.groups - 1u) / p.n;
}

/**
 * Row of the point at slot `slot` (clamped into the dispatch's capacity p.count; callers skip
 * the write past the count). Past a GPU-set count, list entries are stale but valid rows.
 */
fn row(slot: u32) -> u32 {
  let s = min(slot, p.count - 1u);
  if ((p.flags & LISTED) != 0u) {
    return list[p.loff + s];
  }
  return s;
}

/** Merges a range's best b (index i) and second-best s into the running state of row q. */
fn merge(q: u32, b: f32, s: f32, i: u32) {
  let R = p.rows;
  let g = group_of(p.c0);
  let g0 = group_start(g);
  var bb = BIG;
  var ss = BIG;
  var ii = 0u;
  if ((p.flags & FIRST) == 0u) {
    bb = st[q];
    ss = st[R + q];
    ii = code[q];
  }
  if (b < bb) {
    ss = min(bb, s);
    bb = b;
    ii = i;
  } else {
    ss = min(ss, b);
  }
  code[q] = ii;
  st[q] = bb;
  st[R + q] = ss;
  var m = b;
  if (p.c0 != g0) {
    m = min(m, lbs[g * R + q]);
  }
  if (p.c1 == group_start(g + 1u)) {
    m = lower(m);
  }
  lbs[g * R + q] = m;
}

// Nearest and second-nearest centroid in [c0, c1) (inside one group) for up to WG * P points
// per workgroup. The loop keeps the range's own best b, index i and second-best s; afterwards
// they are merged into each point's running state, and the group's running minimum becomes its
// lower bound when the range ends the group. (Keeping the merge and the group minimum out of
// the loop matters: a per-step group check in the loop made it three times slower.)
@compute @workgroup_size(WG)
fn scan(@builtin(workgroup_id) w: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let nc = count();
  let base = (w.x + w.y * p.stride) * (WG * ${P}u) + li;
  // Whole workgroups past the count (a GPU-sized list) scan nothing. (An early return here
  // made Mesa take 10+ s to compile this kernel for some D.)
  let cend = select(p.c1, p.c0, base - li >= nc);
//#for j < P
  let q${j} = row(base + ${j}u * WG);
//#for k < D
  let x${j}_${k} = x[q${j} * D + ${k}u];
//#end
  var b${j} = BIG;
  var s${j} = BIG;
  var i${j} = 0u;
//#end
  for (var c = p.c0; c < cend; c++) {
//#for k < D
    let c${k} = cent[c * D + ${k}u];
//#end
//#for j < P
    var e${j} = 0.0;
//#for k < D
    let t${j}_${k} = x${j}_${k} - c${k};
    e${j} = fma(t${j}_${k}, t${j}_${k}, e${j});
//#end
    s${j} = min(s${j}, max(b${j}, e${j}));
    i${j} = select(i${j}, c, e${j} < b${j});
    b${j} = min(b${j}, e${j});
//#end
  }
//#for j < P
  if (base + ${j}u * WG < nc) {
    merge(q${j}, b${j}, s${j}, i${j});
  }
//#end
}

// After the scans: turns the running state of each listed (or every) point into its assignment
// and bounds. The previous centroid a competes here when its group was not scanned.
@compute @workgroup_size(256)
fn finish(@builtin(global_invocation_id) gid: vec3<u32>) {
  let slot = gid.x + gid.y * p.stride;
  let nc = count();
  if (slot >= nc) {
    return;
  }
  let R = p.rows;
  let q = row(slot);
  let i = code[q];
  let b = st[q];
  if ((p.flags & LISTED) != 0u) {
    let ao = code[R + q];
    if ((ao & OWN) == 0u) {
      let a = ao & ~OWN;
      let e = st[2u * R + q];
      if (e < b || (e == b && a < i)) {
        code[q] = a;
        return;
      }
      let ga = group_of(a);
      lbs[ga * R + q] = min(lbs[ga * R + q], lower(e));
    }
  }
  lbs[group_of(i) * R + q] = lower(st[R + q]);
}

// The filter, for every row of a chunk after the centroids moved. u, the distance to the point's
// centroid a, is computed exactly (one distance per point). Each group's carried lower bound
// shrinks by the group's largest movement, not counting the J fastest-moving centroids of the
// whole run, which are bounded one by one instead: |x - c_j| >= |c_a - c_j| - u, with |c_a - c_j|
// from the host's table. A point with u below every group's bound (and below s(a), half the gap
// from a to its nearest other centroid) keeps a. Otherwise it goes to the list of every group
// whose bound is not above u and to the list of all active points (list G, for `finish`), with
// an empty running state.
@compute @workgroup_size(256)
fn bounds(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.stride;
  if (i >= p.count) {
    return;
  }
  let R = p.rows;
  let G = p.groups;
  let a = code[i];
  var e = 0.0;
  for (var k = 0u; k < D; k++) {
    let t = x[i * D + k] - cent[a * D + k];
    e = fma(t, t, e);
  }
  let u = upper(e);
  let drift0 = p.n;             // moves[drift0 + g]: group g's largest movement outside J
  let js0 = drift0 + G;         // moves[js0 + g]: first J member of group g (J is by group)
  let cj0 = js0 + G + 1u + a * p.jn; // moves[cj0 + k]: lower bound on |c_a - c_J[k]|
  var m = BIG;
  var j = u32(moves[js0]);
  for (var g = 0u; g < G; g++) {
    let v = lbs[g * R + i] - moves[drift0 + g];
    var l = v - abs(v) * DRIFT;
    let jend = u32(moves[js0 + g + 1u]);
    for (; j < jend; j++) {
      let w = moves[cj0 + j] - u;
      l = min(l, w - abs(w) * DRIFT);
    }
    lbs[g * R + i] = l;
    m = min(m, l);
  }
  m = max(m, 0.5 * moves[a]);
  if (u < m) {
    return;
  }
  let ga = group_of(a);
  var own = 0u;
  for (var g = 0u; g < G; g++) {
    if (lbs[g * R + i] <= u) {
      list[g * R + atomicAdd(&cnt[g], 1u)] = i;
      if (g == ga) {
        own = OWN;
      }
    }
  }
  list[G * R + atomicAdd(&cnt[G], 1u)] = i;
  code[i] = 0u;
  code[R + i] = a | own;
  st[i] = BIG;
  st[R + i] = BIG;
  st[2u * R + i] = e;
}
