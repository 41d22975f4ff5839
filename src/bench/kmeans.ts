// Times k-means on seeded Gaussian vectors: the whole run (init, every assignment pass on the
// GPU, host updates), after a small warm-up run with the same d that compiles the pipelines.
// Beside it, when Debian's /usr/bin/python3 has faiss, the peer bench/peers/faiss_kmeans.py
// (faiss k-means, IndexFlatL2) on the same points; never a dependency: skipped with a message
// otherwise, or with CLUSCOMP_PEERS=0.
import process from "node:process";
import { fileURLToPath } from "node:url";
import type { Gpu } from "../gpu/device.ts";
import { kmeans, type KmeansOptions, usesTree } from "../cluster/kmeans.ts";
import { Rng } from "../util/rng.ts";

export interface KmeansBench {
  name: string;
  N: number;
  d: number;
  n: number;
  iters: number;
  /** How the assignment pruned: "tree" (k-d tree candidates), "yinyang" or "none". */
  pruning: string;
  /** Lloyd iterations actually run (fewer than iters if it converged). */
  iterations: number;
  seconds: number;
  /** CPU time of this process (llvmpipe's threads included): steadier than wall time when
   * other processes share the cores. */
  cpu_seconds: number;
  distance_evals: number;
  brute_force_evals: number;
  /** distance_evals / brute_force_evals: the share of brute force's distances computed. */
  fraction_computed: number;
  /** 1 - fraction_computed: the share the bounds pruned. */
  pruned: number;
  /** distance_evals / seconds (whole run, host work included). */
  evals_per_s: number;
  /** brute_force_evals / seconds: the rate brute force would need to match this time. */
  effective_evals_per_s: number;
  objective: number;
  /** The faiss peer on the same points, when it ran. */
  faiss?: FaissPeer;
  /** faiss seconds (estimated for iters, see FaissPeer) / seconds. */
  faiss_ratio?: number;
}

/** faiss k-means on the same points: measured on a budget, scaled to the full run. */
export interface FaissPeer {
  version: string;
  threads: number;
  /** What was measured: iterations and centroids (n, or fewer to fit the time budget). */
  iters_measured: number;
  n_measured: number;
  seconds_measured: number;
  /** seconds_measured / iters_measured * (n / n_measured) * iters: faiss's brute-force
   * assignment costs N * n per iteration, which dominates its run. */
  seconds_estimated: number;
  objective_measured: number | null;
}

const PYTHON = "/usr/bin/python3";
/** Point-centroid pairs the peer may run (one iteration at least): ~30 s of faiss here. */
const PEER_PAIRS = 2 ** 32;

async function hasFaiss(): Promise<boolean> {
  try {
    const r = await new Deno.Command(PYTHON, { args: ["-c", "import faiss"], stderr: "null" })
      .output();
    return r.success;
  } catch {
    return false;
  }
}

/** Runs bench/peers/faiss_kmeans.py on x; null (with a message) when faiss is unavailable. */
export async function benchFaissKmeans(
  x: Float32Array,
  N: number,
  d: number,
  n: number,
  iters: number,
): Promise<FaissPeer | null> {
  if (Deno.env.get("CLUSCOMP_PEERS") === "0") return null;
  if (!(await hasFaiss())) {
    console.error(`bench: ${PYTHON} has no faiss (Debian: python3-faiss), faiss peer skipped`);
    return null;
  }
  // Fit the budget: fewer iterations first, then fewer centroids (halving n).
  const im = Math.max(1, Math.min(iters, Math.floor(PEER_PAIRS / (N * n))));
  let nm = n;
  while (N * nm * im > PEER_PAIRS && nm > 1) nm = Math.ceil(nm / 2);
  const file = await Deno.makeTempFile({ suffix: ".f32" });
  try {
    await Deno.writeFile(file, new Uint8Array(x.buffer, x.byteOffset, N * d * 4));
    const script = fileURLToPath(new URL("../../bench/peers/faiss_kmeans.py", import.meta.url));
    const env = { ...Deno.env.toObject() };
    delete env.OPENBLAS_CORETYPE;
    delete env.OPENBLAS_L2_SIZE;
    const r = await new Deno.Command(PYTHON, {
      args: [script, file, `${N}`, `${d}`, `${nm}`, `${im}`],
      env,
      clearEnv: true,
      stderr: "piped",
    }).output();
    if (!r.success) {
      console.error(`bench: faiss peer failed: ${new TextDecoder().decode(r.stderr).trim()}`);
      return null;
    }
    const out = JSON.parse(new TextDecoder().decode(r.stdout).trim().split("\n").pop()!);
    return {
      version: out.version,
      threads: out.threads,
      iters_measured: im,
      n_measured: nm,
      seconds_measured: out.seconds,
      seconds_estimated: (out.seconds / im) * (n / nm) * iters,
      objective_measured: out.objective,
    };
  } finally {
    await Deno.remove(file);
  }
}

/** k-means of N seeded N(0, 1) vectors of dimension d into n centroids, `iters` iterations. */
export async function benchKmeans(
  gpu: Gpu,
  N: number,
  d: number,
  n: number,
  iters: number,
  opts: {
    maxGroups?: number;
    accelerate?: boolean;
    pruning?: KmeansOptions["pruning"];
    peer?: boolean;
  } = {},
): Promise<KmeansBench> {
  const rng = new Rng(1234);
  const x = new Float32Array(N * d);
  for (let i = 0; i < x.length; i++) x[i] = rng.normal();
  const { peer = true, ...kopts } = opts;
  const tree = usesTree(d, n, kopts);
  // Warm-up: compiles this d's pipelines (the tree's from 1,024 centroids on).
  const w = Math.min(N, 4096);
  await kmeans(gpu, x.subarray(0, w * d), w, d, Math.min(n, tree ? 1024 : 256), {
    iters: 1,
    backend: "gpu",
    ...kopts,
  });
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const r = await kmeans(gpu, x, N, d, n, { iters, seed: 1, backend: "gpu", ...kopts });
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const faiss = peer ? await benchFaissKmeans(x, N, d, n, r.iterations) : null;
  return {
    name: "kmeans",
    N,
    d,
    n,
    iters,
    pruning: (kopts.accelerate ?? true) ? (tree ? "tree" : "yinyang") : "none",
    iterations: r.iterations,
    seconds,
    cpu_seconds: (cpu.user + cpu.system) / 1e6,
    distance_evals: r.distanceEvals,
    brute_force_evals: r.bruteForceEvals,
    fraction_computed: r.distanceEvals / r.bruteForceEvals,
    pruned: 1 - r.distanceEvals / r.bruteForceEvals,
    evals_per_s: r.distanceEvals / seconds,
    effective_evals_per_s: r.bruteForceEvals / seconds,
    objective: r.objective,
    ...(faiss ? { faiss, faiss_ratio: faiss.seconds_estimated / seconds } : {}),
  };
}
