// K-means (squared L2): nearest-centroid scans over centroid ranges, and the Yinyang-style bound
// filter (Hamerly's upper bound, one lower bound per centroid group) that decides which points
// and groups need scanning.
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
// Scan layout: invocation `li` of workgroup `w` holds the points at slots
// w * WG * P + j * WG + li (j < P); every invocation of the workgroup reads the same centroid at
// each step (a workgroup-uniform load, cheap on llvmpipe). A slot is a row of the chunk, or with
// LISTED an entry of one of the active lists. Centroids are grouped: group g is the index range
// [floor(g n / G), floor((g + 1) n / G)). A point's running state between dispatches is
// code = best index I, us = (best B, second-best S) squared distances, and lbs[g] the minimum
// over the group being scanned; FINAL turns them into bounds: us.x = upper(B), and the lower
// bound of I's own group = lower(S). Ties go to the lowest centroid index: every point meets the
// centroids in increasing index order and only a strictly smaller distance replaces the best.

const D: u32 = ${D}u;
const WG: u32 = ${WG}u;
const BIG: f32 = 3.40282347e38;
// Rounding guards for bounds made from f32 distances: the squared distance of D <= 16 terms has
// relative error below (D + 3) * 2^-24 < 1.2e-6, its sqrt half that; REL covers it three times
// over. ABS covers flushed subnormals. DRIFT covers one f32 add or subtract when a bound moves.
const REL: f32 = 4e-6;
const ABS: f32 = 1e-18;
const DRIFT: f32 = 1e-6;
// Scan flags.
const FIRST: u32 = 1u;   // the point's first range: start from no candidate
const GFIRST: u32 = 2u;  // first range of group p.group: start its minimum afresh
const GLAST: u32 = 4u;   // last range of group p.group: store its minimum as a lower bound
const LISTED: u32 = 8u;  // points come from list[p.loff ..], not rows 0 .. count-1
const FINAL: u32 = 16u;  // no centroids: turn the running state into bounds

struct Params {
  count: u32,  // points to process: slots (scan) or rows (bounds)
  c0: u32,     // scan: first centroid of the range
  c1: u32,     // scan: one past the last centroid of the range
  flags: u32,  // scan: FIRST | GFIRST | GLAST | LISTED | FINAL
  stride: u32, // workgroups (scan) or invocations (bounds) along x of the 2-D grid
  n: u32,      // centroids
  groups: u32, // centroid groups G
  group: u32,  // scan: the group [c0, c1) lies in
  loff: u32,   // scan: offset of the active list in `list`
  rows: u32,   // rows of the chunk (length of each active list)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;            // [rows, D] points
@group(0) @binding(2) var<storage, read> cent: array<f32>;         // [n, D] centroids
@group(0) @binding(3) var<storage, read_write> list: array<u32>;   // [G + 1, rows] active lists
@group(0) @binding(4) var<storage, read_write> code: array<u32>;   // [rows] centroid I
@group(0) @binding(5) var<storage, read_write> us: array<f32>;     // [rows, 2] (upper or B, S)
@group(0) @binding(6) var<storage, read_write> lbs: array<f32>;    // [rows, G] group lower bounds
@group(0) @binding(7) var<storage, read> moves: array<f32>;        // [2n + G] mv, s, group drift
@group(0) @binding(8) var<storage, read_write> cnt: array<atomic<u32>>; // [G + 2] list lengths
                                                                   // (G + 1), tightened points

/** An upper bound on the true distance whose squared f32 evaluation is e. */
fn upper(e: f32) -> f32 {
  return sqrt(e) * (1.0 + REL) + ABS;
}

/** A lower bound on the true distance whose squared f32 evaluation is e. */
fn lower(e: f32) -> f32 {
  return sqrt(e) * (1.0 - REL) - ABS;
}

/** The group of centroid c: the g with floor(g n / G) <= c < floor((g + 1) n / G). */
fn group_of(c: u32) -> u32 {
  return ((c + 1u) * p.groups - 1u) / p.n;
}

/** Row of the point at slot `slot` (clamped into range; callers skip the write when out). */
fn row(slot: u32) -> u32 {
  let s = min(slot, p.count - 1u);
  if ((p.flags & LISTED) != 0u) {
    return list[p.loff + s];
  }
  return s;
}

fn save(q: u32, b: f32, s: f32, i: u32, m: f32) {
  if ((p.flags & FINAL) != 0u) {
    us[2u * q] = upper(b);
    lbs[q * p.groups + group_of(i)] = lower(s);
    return;
  }
  code[q] = i;
  us[2u * q] = b;
  us[2u * q + 1u] = s;
  if ((p.flags & GLAST) != 0u) {
    lbs[q * p.groups + p.group] = lower(m);
  } else {
    lbs[q * p.groups + p.group] = m;
  }
}

// Nearest and second-nearest centroid in [c0, c1) (part of group p.group) for up to WG * P
// points per workgroup, merged into each point's running state.
@compute @workgroup_size(WG)
fn scan(@builtin(workgroup_id) w: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let base = (w.x + w.y * p.stride) * (WG * ${P}u) + li;
  let first = (p.flags & FIRST) != 0u;
  let gfirst = (p.flags & GFIRST) != 0u;
//#for j < P
  let q${j} = row(base + ${j}u * WG);
//#for k < D
  let x${j}_${k} = x[q${j} * D + ${k}u];
//#end
  var b${j} = BIG;
  var s${j} = BIG;
  var i${j} = 0u;
  var m${j} = BIG;
  if (!first) {
    b${j} = us[2u * q${j}];
    s${j} = us[2u * q${j} + 1u];
    i${j} = code[q${j}];
  }
  if (!gfirst) {
    m${j} = lbs[q${j} * p.groups + p.group];
  }
//#end
  for (var c = p.c0; c < p.c1; c++) {
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
    m${j} = min(m${j}, e${j});
//#end
  }
//#for j < P
  if (base + ${j}u * WG < p.count) {
    save(q${j}, b${j}, s${j}, i${j}, m${j});
  }
//#end
}

// The filter, for every row of a chunk after the centroids moved. The upper bound u grows by
// the movement of the point's centroid a; the lower bound of each group shrinks by the largest
// movement in the group. A point with u below every group's bound (and below s(a), half the gap
// from a to its nearest other centroid) keeps a. Otherwise u is recomputed exactly and the test
// repeated; a point that still fails goes to the list of every group whose bound is not above u,
// and of a's group (so that the old centroid competes), and to the list of all active points
// (list G, for the FINAL pass); its running state starts empty.
@compute @workgroup_size(256)
fn bounds(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.stride;
  if (i >= p.count) {
    return;
  }
  let a = code[i];
  let u0 = (us[2u * i] + moves[a]) * (1.0 + DRIFT);
  var m = BIG;
  for (var g = 0u; g < p.groups; g++) {
    let v = lbs[i * p.groups + g] - moves[2u * p.n + g];
    let l = v - abs(v) * DRIFT;
    lbs[i * p.groups + g] = l;
    m = min(m, l);
  }
  m = max(m, 0.5 * moves[p.n + a]);
  if (u0 < m) {
    us[2u * i] = u0;
    return;
  }
  var e = 0.0;
  for (var k = 0u; k < D; k++) {
    let t = x[i * D + k] - cent[a * D + k];
    e = fma(t, t, e);
  }
  let u = upper(e);
  atomicAdd(&cnt[p.groups + 1u], 1u);
  if (u < m) {
    us[2u * i] = u;
    return;
  }
  let ga = group_of(a);
  for (var g = 0u; g < p.groups; g++) {
    if (g == ga || lbs[i * p.groups + g] <= u) {
      list[g * p.rows + atomicAdd(&cnt[g], 1u)] = i;
    }
  }
  list[p.groups * p.rows + atomicAdd(&cnt[p.groups], 1u)] = i;
  us[2u * i] = BIG;
  us[2u * i + 1u] = BIG;
  code[i] = 0u;
}
