// Times the general matmul on random data: median and fastest of timed runs after a warm-up
// dispatch (which includes pipeline compilation), each run waited for with gpu.sync(). The
// machines are shared, so the fastest run (best_gflops) is the steadier figure for comparing
// kernel variants; the median shows what a caller sees under the current load.
import type { Gpu } from "../gpu/device.ts";
import { matmul } from "../kernels/matmul.ts";
import { Rng } from "../util/rng.ts";

export interface MatmulBench {
  name: string;
  shapes: string;
  median_ms: number;
  min_ms: number;
  /** From the median run. */
  gflops: number;
  /** From the fastest run. */
  best_gflops: number;
}

function random(n: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.next() - 0.5;
  return out;
}

/** C[M, N] = At[K, M]^T B[K, N] with packed rows; `reps` timed runs (at least 1). */
export async function benchMatmul(
  gpu: Gpu,
  M: number,
  N: number,
  K: number,
  reps: number,
): Promise<MatmulBench> {
  const a = gpu.createBuffer(K * M * 4, "bench.at");
  const b = gpu.createBuffer(K * N * 4, "bench.b");
  const c = gpu.createBuffer(M * N * 4, "bench.c");
  try {
    await gpu.write(a, random(K * M, 1));
    await gpu.write(b, random(K * N, 2));
    const run = () => matmul(gpu, { M, N, K, a, lda: M, b, ldb: N, c, ldc: N });
    run();
    await gpu.sync();
    const times: number[] = [];
    for (let i = 0; i < Math.max(1, reps); i++) {
      const t0 = performance.now();
      run();
      await gpu.sync();
      times.push(performance.now() - t0);
    }
    times.sort((x, y) => x - y);
    const mid = times.length >> 1;
    const median = times.length % 2 ? times[mid] : (times[mid - 1] + times[mid]) / 2;
    return {
      name: "matmul",
      shapes: `M=${M} N=${N} K=${K}`,
      median_ms: median,
      min_ms: times[0],
      gflops: (2 * M * N * K) / (median * 1e6),
      best_gflops: (2 * M * N * K) / (times[0] * 1e6),
    };
  } finally {
    gpu.releaseBuffer(a);
    gpu.releaseBuffer(b);
    gpu.releaseBuffer(c);
  }
}
