// Shared by the k-means tests: seeded Gaussian blobs, and the bit-for-bit comparison of two runs
// (it names the first differing points instead of printing whole arrays).
import assert from "node:assert/strict";
import type { KmeansResult } from "../../src/cluster/kmeans.ts";
import { Rng } from "../../src/util/rng.ts";

/** N points in d dimensions around k seeded centres (spread 4, unit noise). */
export function blobs(N: number, d: number, k: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  const centres = Float32Array.from({ length: k * d }, () => 4 * rng.normal());
  const x = new Float32Array(N * d);
  for (let i = 0; i < N; i++) {
    const b = rng.int(k);
    for (let j = 0; j < d; j++) x[i * d + j] = centres[b * d + j] + rng.normal();
  }
  return x;
}

export function sameBits(a: Float32Array, b: Float32Array): boolean {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  return ua.length === ub.length && ua.every((v, i) => v === ub[i]);
}

/** The first (up to 5) points whose codes differ. */
export function firstDiff(a: Uint32Array, b: Uint32Array): string {
  const out: string[] = [];
  for (let i = 0; i < a.length && out.length < 5; i++) {
    if (a[i] !== b[i]) out.push(`point ${i}: ${a[i]} vs ${b[i]}`);
  }
  return out.join("; ");
}

/** Two runs with the same codes, centroid bits, objective, sse and iterations. */
export function assertSameRun(a: KmeansResult, b: KmeansResult, label: string): void {
  assert.ok(
    a.codes.length === b.codes.length && a.codes.every((c, i) => c === b.codes[i]),
    `${label}: codes differ (${firstDiff(a.codes, b.codes)})`,
  );
  assert.ok(sameBits(a.centroids, b.centroids), `${label}: centroids differ`);
  assert.equal(a.objective, b.objective, `${label}: objective differs`);
  assert.equal(a.sse, b.sse, `${label}: sse differs`);
  assert.equal(a.iterations, b.iterations, `${label}: iterations differ`);
}
