// K-means assignment over per-tile candidate lists (exact; src/cluster/kmeans_tree.ts).
//
// Template (expanded per (D, P, WG) by src/cluster/kmeans_tree.ts): `${D}` is the vector
// dimension, `${P}` the points each invocation holds, `${WG}` the workgroup size; lines between
// `//#for j < P` and `//#end` repeat for j = 0 .. P-1 (likewise `//#for k < D`), so the points
// and their running minima stay in registers and the candidate loop is the only loop (at most
// n / 2 trips, below Mesa's 65,535 cap for the n the host allows).
//
// The points are cut on the host into tiles of WG * P slots (compact boxes of a k-d split of
// the points; padding slots hold zeros and their codes are ignored). For each tile the host
// lists every centroid that could be nearest to one of its points (from a k-d tree over the
// centroids, each point's distance to a known centroid bounding the search; see the host code
// for the guard). One workgroup scans one tile's list: every invocation reads the same
// candidate at each step, and keeps the smallest f32 distance, ties to the lowest centroid
// index: brute force's pick, since every centroid left out is strictly farther than one listed.

const D: u32 = ${D}u;
const P: u32 = ${P}u;
const WG: u32 = ${WG}u;
const BIG: f32 = 3.40282346e38; // f32 max; Tint rejects 3.40282347e38 (past f32 max)

struct Params {
  tiles: u32,  // tiles in this dispatch
  stride: u32, // workgroups along x of the 2-D grid
  t0: u32,     // first tile of this dispatch (within the chunk)
  rows: u32,   // slots of the chunk
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> code: array<u32>; // [rows] nearest centroid
@group(0) @binding(2) var<storage, read> x: array<f32>;          // [rows, D] points by slot
@group(0) @binding(3) var<storage, read> cent: array<f32>;       // [n, D] centroids
@group(0) @binding(4) var<storage, read> cand: array<u32>;       // candidate centroid indices
@group(0) @binding(5) var<storage, read> toff: array<u32>;       // [tiles + 1] list offsets

@compute @workgroup_size(WG)
fn tiles(@builtin(workgroup_id) w: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let t = w.x + w.y * p.stride;
  let tt = min(t, p.tiles - 1u);
  let lo = toff[tt];
  // Workgroups past the last tile (a 2-D grid's remainder) scan nothing and write nothing.
  let hi = select(toff[tt + 1u], lo, t >= p.tiles);
  let base = (p.t0 + tt) * (WG * P) + li;
//#for j < P
  let q${j} = base + ${j}u * WG;
//#for k < D
  let x${j}_${k} = x[q${j} * D + ${k}u];
//#end
  var b${j} = BIG;
  var i${j} = 0u;
//#end
  // Two candidates per trip (the second clamped to the last: meeting a centroid twice changes
  // nothing), so a list of up to 2 * 60,000 centroids stays under the loop cap.
  for (var c = lo; c < hi; c += 2u) {
//#for h < 2
    let id${h} = cand[min(c + ${h}u, hi - 1u)];
//#for k < D
    let c${h}_${k} = cent[id${h} * D + ${k}u];
//#end
//#for j < P
    var e${h}_${j} = 0.0;
//#for k < D
    let t${h}_${j}_${k} = x${j}_${k} - c${h}_${k};
    e${h}_${j} = fma(t${h}_${j}_${k}, t${h}_${j}_${k}, e${h}_${j});
//#end
    let better${h}_${j} = e${h}_${j} < b${j} || (e${h}_${j} == b${j} && id${h} < i${j});
    i${j} = select(i${j}, id${h}, better${h}_${j});
    b${j} = select(b${j}, e${h}_${j}, better${h}_${j});
//#end
//#end
  }
  if (t < p.tiles) {
//#for j < P
    code[q${j}] = i${j};
//#end
  }
}
