// Plain TypeScript brute-force Lloyd's k-means in f64: the reference for src/cluster/kmeans.ts.
// Same initialisation (initCentroids, host code shared with the GPU version), and its own copy of
// the update rule: means in f64 in point order rounded to f32; empty clusters, in increasing
// index order, take the distinct points of largest error against the previous centroids
// (decreasing error, ties by lowest index); stop when an update leaves the centroids unchanged.
import { initCentroids } from "../../src/cluster/kmeans.ts";

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
): Float32Array {
  const sums = new Float64Array(n * d), counts = new Float64Array(n);
  for (let i = 0; i < N; i++) {
    counts[codes[i]]++;
    for (let k = 0; k < d; k++) sums[codes[i] * d + k] += x[i * d + k];
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
      err.push({ e, i });
    }
    err.sort((a, b) => b.e - a.e || a.i - b.i);
    empty.forEach((j, m) => {
      for (let k = 0; k < d; k++) next[j * d + k] = x[err[m].i * d + k];
    });
  }
  return next;
}

function objectiveRef(x: Float32Array, N: number, d: number, c: Float32Array, codes: Uint32Array) {
  let total = 0;
  for (let i = 0; i < N; i++) {
    for (let k = 0; k < d; k++) total += (x[i * d + k] - c[codes[i] * d + k]) ** 2;
  }
  return total;
}

export function kmeansRef(
  x: Float32Array,
  N: number,
  d: number,
  n: number,
  iters: number,
  seed: number,
  init: "random" | "kmeans++" = "random",
): KmeansRef {
  let c = initCentroids(x, N, d, n, seed, init);
  let a = assignRef(x, N, d, c, n);
  let iterations = 0;
  while (iterations < iters) {
    const next = updateRef(x, N, d, n, a.codes, c);
    if (next.every((v, i) => Object.is(v, c[i]))) break;
    c = next;
    a = assignRef(x, N, d, c, n);
    iterations++;
  }
  return {
    centroids: c,
    codes: a.codes,
    objective: objectiveRef(x, N, d, c, a.codes),
    iterations,
    nearest: a.nearest,
    second: a.second,
  };
}
