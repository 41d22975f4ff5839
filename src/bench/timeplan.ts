// The rates the time plan (src/pipeline/timeplan.ts) divides by, measured on the adapter at hand
// with the project's own benchmarks: benchLinear (the codebook forms, matmul and denseMatvec on
// one in x out layer; each timed after a warm-up call that compiles its pipeline) and
// benchKmeans (a short accelerated k-means after a warm-up run). A few seconds on llvmpipe.
import type { Gpu } from "../gpu/device.ts";
import type { Throughput } from "../pipeline/timeplan.ts";
import { benchKmeans } from "./kmeans.ts";
import { benchLinear, type LinearBench } from "./codebook_linear.ts";

export interface MeasureOptions {
  /** Codebook shape of the codebook-kernel rows (default 8 and 65536). */
  d?: number;
  n?: number;
  /** Layer shape (default 2048 x 2048) and tokens of the batched rows (default 256). */
  dim?: number;
  tokens?: number;
  /** k-means points and centroids (default 65536 points, d = 8, n = 4096, 3 iterations). */
  kmeansPoints?: number;
  kmeansCentroids?: number;
  kmeansIters?: number;
}

export async function measureThroughput(gpu: Gpu, o: MeasureOptions = {}): Promise<Throughput> {
  const t0 = performance.now();
  const d = o.d ?? 8, n = o.n ?? 65536, dim = o.dim ?? 2048, N = o.tokens ?? 256;
  const rows: LinearBench[] = [];
  await benchLinear(
    gpu,
    { in: dim, out: dim, Ns: [1, N], pairs: [[d, n]], reps: 3, trials: 2 },
    (r) => rows.push(r),
  );
  const row = (form: string, tokens: number, chosen = false) => {
    const r = rows.find((q) => q.N === tokens && (chosen ? q.chosen : q.form === form));
    if (!r) throw new Error(`measureThroughput: no ${form} row at N = ${tokens}`);
    return r;
  };
  const mm = row("dense-matmul", N), mv = row("dense-matvec", 1);
  const tile = row("codebook", N, true), cmv = row("codebook", 1, true);
  const kp = o.kmeansPoints ?? 65536, kn = o.kmeansCentroids ?? 4096, ki = o.kmeansIters ?? 3;
  const km = await benchKmeans(gpu, kp, 8, kn, ki);
  return {
    adapter: gpu.adapterName,
    matmul_flops_per_s: mm.gflops * 1e9,
    codebook_flops_per_s: tile.gflops * 1e9,
    kmeans_evals_per_s: km.evals_per_s,
    kmeans_pruning: km.fraction_computed,
    dense_bytes_per_s: mv.weight_bytes / (mv.ms / 1000),
    codebook_bytes_per_s: cmv.weight_bytes / (cmv.ms / 1000),
    measure_seconds: (performance.now() - t0) / 1000,
    shapes: {
      matmul: `${dim}x${dim}, ${N} tokens`,
      codebook: `${tile.form} ${dim}x${dim} d=${d} n=${n}, ${N} tokens`,
      dense_matvec: `${dim}x${dim}, 1 token`,
      codebook_matvec: `${cmv.form} ${dim}x${dim} d=${d} n=${n}, 1 token`,
      kmeans: `N=${kp} d=8 n=${kn}, ${km.iterations} iterations`,
    },
  };
}
