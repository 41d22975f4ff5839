// Times the codebook-native linear forms against the dense kernels on one in x out layer with
// seeded random codes, centroids and inputs: for every (d, n) and token count N, each codebook
// form that applies, then the dense matmul (feature-major, At = W^T) and denseMatvec on a dense
// W^T of the same shape. One call is timed as the slope between `reps` calls per sync and one
// call per sync (the ~10 ms submit-and-wait round trip of llvmpipe cancels), the best of a few
// trials, after a warm-up call that compiles the pipelines.
import process from "node:process";
import { codeBits, packCodes, packedWords } from "../io/pack.ts";
import type { Gpu } from "../gpu/device.ts";
import {
  chooseForm,
  type CodebookForm,
  type CodebookLayer,
  codebookLinear,
  formsFor,
} from "../kernels/codebook_linear.ts";
import { matmul } from "../kernels/matmul.ts";
import { denseMatvec } from "../kernels/matvec.ts";
import { Rng } from "../util/rng.ts";

export interface LinearBench {
  name: "linear";
  /** A codebook form, or "dense-matmul" / "dense-matvec". */
  form: string;
  in: number;
  out: number;
  /** Codebook shape (absent for the dense rows). */
  d?: number;
  n?: number;
  N: number;
  /** Wall milliseconds per call. */
  ms: number;
  /** CPU milliseconds per call of this process, llvmpipe's threads included (steadier than wall
   * time when other processes share the cores; about cores x ms when the kernel keeps them busy). */
  cpu_ms: number;
  /** 2 * in * out * N / ms, the dense-equivalent rate. */
  gflops: number;
  /** Bytes of weights one call reads: packed codes plus codebook, or the dense W^T. */
  weight_bytes: number;
  /** Whether chooseForm picks this form for the shape. */
  chosen?: boolean;
}

export interface LinearBenchOptions {
  in: number;
  out: number;
  Ns: number[];
  pairs: [number, number][];
  /** Calls per sync in the timed runs, and trials (best kept). */
  reps: number;
  trials: number;
}

/** The shapes `deno task bench --only linear` runs (quick: a smaller layer, fewer tokens). */
export function linearBenchOptions(quick: boolean): LinearBenchOptions {
  const pairs: [number, number][] = [[4, 256], [4, 4096], [8, 4096], [8, 65536], [2, 16]];
  return quick
    ? { in: 1024, out: 1024, Ns: [1, 8, 64], pairs, reps: 3, trials: 2 }
    : { in: 4096, out: 4096, Ns: [1, 8, 512], pairs, reps: 4, trials: 3 };
}

function random(n: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.next() - 0.5;
  return out;
}

async function upload(gpu: Gpu, data: Float32Array | Uint32Array, label: string) {
  const b = gpu.createBuffer(data.byteLength, label);
  await gpu.write(b, data);
  return b;
}

/** Wall and CPU ms of one call of `run` (see the file comment). */
async function timeCall(
  gpu: Gpu,
  run: () => void,
  reps: number,
  trials: number,
): Promise<{ ms: number; cpu_ms: number }> {
  run();
  await gpu.sync();
  const batch = async (k: number) => {
    const c0 = process.cpuUsage(), t0 = performance.now();
    for (let i = 0; i < k; i++) run();
    await gpu.sync();
    const c = process.cpuUsage(c0);
    return { ms: performance.now() - t0, cpu: (c.user + c.system) / 1000 };
  };
  let one = Infinity, many = Infinity, cpu = Infinity;
  for (let t = 0; t < trials; t++) {
    one = Math.min(one, (await batch(1)).ms);
    const m = await batch(reps);
    many = Math.min(many, m.ms);
    cpu = Math.min(cpu, m.cpu / reps);
  }
  const ms = reps > 1 ? Math.max((many - one) / (reps - 1), many / reps / 4) : many;
  return { ms, cpu_ms: cpu };
}

/** One LinearBench per (form, d, n, N) and per dense kernel and N; `emit` gets each as it ends. */
export async function benchLinear(
  gpu: Gpu,
  opts: LinearBenchOptions,
  emit: (r: LinearBench) => void,
): Promise<void> {
  const { in: inDim, out, Ns, reps, trials } = opts;
  const maxN = Math.max(...Ns);
  const x = await upload(gpu, random(inDim * maxN, 1), "bench.x");
  const y = gpu.createBuffer(out * maxN * 4, "bench.y");
  const row = (form: string, N: number, t: { ms: number; cpu_ms: number }, bytes: number) => ({
    name: "linear" as const,
    form,
    in: inDim,
    out,
    N,
    ms: round(t.ms),
    cpu_ms: round(t.cpu_ms),
    gflops: round((2 * inDim * out * N) / (t.ms * 1e6)),
    weight_bytes: bytes,
  });
  try {
    for (const [d, n] of opts.pairs) {
      const cols = Math.ceil(out / d), bits = codeBits(n);
      const rng = new Rng(d * 100_003 + n);
      const codes = Uint32Array.from({ length: inDim * cols }, () => rng.int(n));
      const layer: CodebookLayer = {
        in: inDim,
        out,
        d,
        n,
        splits: 1,
        bits,
        centroids: await upload(gpu, random(n * d, 2), "bench.centroids"),
        codes: await upload(gpu, packCodes(codes, bits), "bench.codes"),
      };
      const bytes = packedWords(inDim * cols, bits) * 4 + n * d * 4;
      try {
        for (const N of Ns) {
          const io = { N, x, ldx: N, y, yRow: N, yCol: 1 };
          for (const form of ["matvec", "lut", "tile"] as CodebookForm[]) {
            if (!formsFor(layer, N).includes(form)) continue;
            const t = await timeCall(gpu, () => codebookLinear(gpu, layer, io, form), reps, trials);
            emit({ ...row(form, N, t, bytes), d, n, chosen: chooseForm(layer, N) === form });
          }
        }
      } finally {
        gpu.releaseBuffer(layer.centroids);
        gpu.releaseBuffer(layer.codes);
      }
    }
    const w = await upload(gpu, random(inDim * out, 3), "bench.wT");
    try {
      for (const N of Ns) {
        const mm = () =>
          matmul(gpu, { M: out, N, K: inDim, a: w, lda: out, b: x, ldb: N, c: y, ldc: N });
        emit(row("dense-matmul", N, await timeCall(gpu, mm, reps, trials), inDim * out * 4));
        const mv = () => denseMatvec(gpu, w, inDim, out, { N, x, ldx: N, y, yRow: N, yCol: 1 });
        emit(row("dense-matvec", N, await timeCall(gpu, mv, reps, trials), inDim * out * 4));
      }
    } finally {
      gpu.releaseBuffer(w);
    }
  } finally {
    gpu.releaseBuffer(x);
    gpu.releaseBuffer(y);
  }
}

function round(v: number): number {
  return Math.round(v * 1000) / 1000;
}
