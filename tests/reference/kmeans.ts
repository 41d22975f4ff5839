// Plain TypeScript brute-force Lloyd's k-means in f64: the reference for src/cluster/kmeans.ts.
// Same initialisation (initCentroids, host code shared with the GPU version), and its own copy of
// the update rule: means in f64 in point order rounded to f32; empty clusters, in increasing
// index order, take the distinct points of largest error against the previous centroids
// (decreasing error, ties by lowest index); stop when an update leaves the centroids unchanged.
// With weights: weighted means, clusters of total weight 0 re-seeded like empty ones (by weighted
// error), weighted objective; pickPointsRef is its own copy of weighted kmeans++ sampling.
import { initCentroids } from "../../src/cluster/kmeans.ts";
import { Rng } from "../../src/util/rng.ts";

export interface KmeansRef {
  centroids: Float32Array;
  codes: Uint32Array;
  objective: number;
  iterations: number;
  /** Per point: squared distances to the nearest and second-nearest final centroid. */
  nearest: Float64Array;
  second: Float64Array;
}

function assignRef(x: Float32Array, N: number, d: number, c: Float32Array, n: number) {
  const codes = new Uint32Array(N);
  const nearest = new Float64Array(N), second = new Float64Array(N);
  for (let i = 0; i < N; i++) {
    let b = Infinity, s = Infinity, bi = 0;
    for (let j = 0; j < n; j++) {
      let e = 0;
      for (let k = 0; k < d; k++) {
        const t = x[i * d + k] - c[j * d + k];
        e += t * t;
      }
      if (e < b) {
        s = b;
        b = e;
        bi = j;
      } else if (e < s) s = e;
    }
    codes[i] = bi;
    nearest[i] = b;
    second[i] = s;
  }
  return { codes, nearest, second };
}

function updateRef(
  x: Float32Array,
  N: number,
  d: number,
  n: number,
  codes: Uint32Array,
  prev: Float32Array,
  w?: Float32Array,
): Float32Array {
  const sums = new Float64Array(n * d), counts = new Float64Array(n);
  for (let i = 0; i < N; i++) {
    const wi = w ? w[i] : 1;
    counts[codes[i]] += wi;
    for (let k = 0; k < d; k++) sums[codes[i] * d + k] += wi * x[i * d + k];
  }
  const next = new Float32Array(n * d);
  const empty: number[] = [];
  for (let j = 0; j < n; j++) {
    if (counts[j] === 0) empty.push(j);
    else for (let k = 0; k < d; k++) next[j * d + k] = sums[j * d + k] / counts[j];
  }
  if (empty.length) {
    const err: { e: number; i: number }[] = [];
    for (let i = 0; i < N; i++) {
      let e = 0;
      for (let k = 0; k < d; k++) e += (x[i * d + k] - prev[codes[i] * d + k]) ** 2;
      err.push({ e: w ? w[i] * e : e, i });
    }
    err.sort((a, b) => b.e - a.e || a.i - b.i);
    empty.forEach((j, m) => {
      for (let k = 0; k < d; k++) next[j * d + k] = x[err[m].i * d + k];
    });
  }
  return next;
}

/** Weighted (or plain) sum of squared errors. */
export function objectiveRef(
  x: Float32Array,
  N: number,
  d: number,
  c: Float32Array,
  codes: Uint32Array,
  w?: Float32Array,
) {
  let total = 0;
  for (let i = 0; i < N; i++) {
    let e = 0;
    for (let k = 0; k < d; k++) e += (x[i * d + k] - c[codes[i] * d + k]) ** 2;
    total += (w ? w[i] : 1) * e;
  }
  return total;
}

/**
 * Weighted kmeans++ draws, in draw order: point i with probability w_i / sum(w) first, then
 * w_i D_i^2 / sum(w D^2), D_i the distance to the nearest drawn point; one Rng(seed).next() per
 * draw, inverted by a cumulative sum in point order.
 */
export function pickPointsRef(
  x: Float32Array,
  N: number,
  d: number,
  n: number,
  seed: number,
  w: Float32Array,
): Float32Array {
  const rng = new Rng(seed);
  const dist = new Float64Array(N).fill(Infinity);
  const out = new Float32Array(n * d);
  for (let m = 0; m < n; m++) {
    const p = Array.from({ length: N }, (_, i) => w[i] * (m === 0 ? 1 : dist[i]));
    const total = p.reduce((s, v) => s + v, 0);
    const r = rng.next() * total;
    let acc = 0, pick = -1;
    for (let i = 0; i < N && !(acc > r); i++) {
      if (p[i] > 0) {
        acc += p[i];
        pick = i;
      }
    }
    out.set(x.subarray(pick * d, pick * d + d), m * d);
    for (let i = 0; i < N; i++) {
      let e = 0;
      for (let k = 0; k < d; k++) e += (x[i * d + k] - x[pick * d + k]) ** 2;
      dist[i] = Math.min(dist[i], e);
    }
  }
  return out;
}

export function kmeansRef(
  x: Float32Array,
  N: number,
  d: number,
  n: number,
  iters: number,
  seed: number,
  init: "random" | "kmeans++" = "random",
  w?: Float32Array,
): KmeansRef {
  let c = initCentroids(x, N, d, n, seed, init, w);
  let a = assignRef(x, N, d, c, n);
  let iterations = 0;
  while (iterations < iters) {
    const next = updateRef(x, N, d, n, a.codes, c, w);
    if (next.every((v, i) => Object.is(v, c[i]))) break;
    c = next;
    a = assignRef(x, N, d, c, n);
    iterations++;
  }
  return {
    centroids: c,
    codes: a.codes,
    objective: objectiveRef(x, N, d, c, a.codes, w),
    iterations,
    nearest: a.nearest,
    second: a.second,
  };
}
