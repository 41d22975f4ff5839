// Times k-means on seeded Gaussian vectors: the whole run (init, every assignment pass on the
// GPU, host updates), after a small warm-up run with the same d that compiles the pipelines.
import process from "node:process";
import type { Gpu } from "../gpu/device.ts";
import { kmeans } from "../cluster/kmeans.ts";
import { Rng } from "../util/rng.ts";

export interface KmeansBench {
  name: string;
  N: number;
  d: number;
  n: number;
  iters: number;
  /** Lloyd iterations actually run (fewer than iters if it converged). */
  iterations: number;
  seconds: number;
  /** CPU time of this process (llvmpipe's threads included): steadier than wall time when
   * other processes share the cores. */
  cpu_seconds: number;
  distance_evals: number;
  brute_force_evals: number;
  fraction_computed: number;
  /** distance_evals / seconds (whole run, host work included). */
  evals_per_s: number;
  /** brute_force_evals / seconds: the rate brute force would need to match this time. */
  effective_evals_per_s: number;
  objective: number;
}

/** k-means of N seeded N(0, 1) vectors of dimension d into n centroids, `iters` iterations. */
export async function benchKmeans(
  gpu: Gpu,
  N: number,
  d: number,
  n: number,
  iters: number,
  opts: { maxGroups?: number; accelerate?: boolean } = {},
): Promise<KmeansBench> {
  const rng = new Rng(1234);
  const x = new Float32Array(N * d);
  for (let i = 0; i < x.length; i++) x[i] = rng.normal();
  // Warm-up: compiles this d's pipelines.
  const w = Math.min(N, 4096);
  await kmeans(gpu, x.subarray(0, w * d), w, d, Math.min(n, 256), { iters: 1 });
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const r = await kmeans(gpu, x, N, d, n, { iters, seed: 1, ...opts });
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  return {
    name: "kmeans",
    N,
    d,
    n,
    iters,
    iterations: r.iterations,
    seconds,
    cpu_seconds: (cpu.user + cpu.system) / 1e6,
    distance_evals: r.distanceEvals,
    brute_force_evals: r.bruteForceEvals,
    fraction_computed: r.distanceEvals / r.bruteForceEvals,
    evals_per_s: r.distanceEvals / seconds,
    effective_evals_per_s: r.bruteForceEvals / seconds,
    objective: r.objective,
  };
}
