// The time plan: the work of each stage counted in the units the kernel benchmarks measure
// (k-means distance evaluations, matmul FLOPs, codebook-linear FLOPs, bytes streamed by the
// matrix-vector kernels), and seconds = work / rate for rates measured on an adapter
// (src/bench/timeplan.ts measures them; `deno task plan --measure` or `--throughput FILE`).
//
// The counts follow the code, not the paper:
// - cluster (src/cluster/stage.ts, kmeans.ts): per linear and split, N = (in / splits) *
//   ceil(out / d) vectors against n centroids, one initial assignment plus `iters` Lloyd rounds,
//   `restarts` times: brute force would compute N * n * (iters + 1) * restarts distances. The
//   accelerated exact k-means computes only a share of these (its bounds skip most centroids;
//   KmeansResult.distanceEvals / bruteForceEvals), and stops early at a fixed point: the estimate
//   multiplies by the measured share (Throughput.kmeans_pruning, 1 when unknown). The share
//   depends on the data and on n; it is measured on Gaussian vectors over a few iterations, where
//   bounds prune less than over 20 iterations on real weights, so the estimate leans high.
// - finetune (src/finetune/stage.ts, student.ts, src/model/backward.ts), per block, one window of
//   T tokens at a time, with F = 2 * P * T + A the forward (P: the block's linear parameters,
//   A = 4 * heads * headDim * T^2 the attention's two square matmuls, computed over the full
//   T x T): the teacher pass over every window (twice with the extra term), the held-out
//   evaluation before training, then per epoch (all `epochs`: patience may stop earlier) every
//   training window forward with kept activations plus backward (dW^T of every linear 2 * P * T,
//   dX of o, gate, up and down, the attention backward's five square matmuls 2.5 * A) and the
//   held-out evaluation, then the student outputs over every window. Per step, the codebook
//   scatter of each dW^T and the decode + transpose of W after the AdamW step stream about
//   16 * P bytes (counted as dense bytes).
// - eval / eval-original: one forward over floor(evalTokens / evalSeqlen) windows, with the
//   logits of every token (lm_head); the compressed rows' linears run as codebook kernels.
// - generate: per new token, every compressed weight byte (packed codes and f32 codebooks) once,
//   lm_head (f32) once, and the KV cache up to that position (memory-bound); the prompt's
//   prefill is not counted.
// - export decodes on the host: no estimate.
import type { ModelConfig } from "../io/config.ts";
import { linearNames } from "../io/config.ts";
import { codebookGpuBytes } from "../io/pack.ts";

export interface TimePlanSettings {
  d: number;
  n: number;
  splits: number;
  /** k-means Lloyd rounds after the initial assignment (compress --iters). */
  iters: number;
  /** k-means runs per matrix (compress --restarts). */
  restarts: number;
  calibSamples: number;
  calibSeqlen: number;
  /** Share of calibration windows held out (compress --holdout). */
  holdout: number;
  epochs: number;
  extraTerm: boolean;
  finetune: boolean;
  evalSeqlen: number;
  evalTokens: number;
  /** Tokens generated for the generate row. */
  newTokens: number;
  /** Whole-model training (the teacher and train rows): window length and windows, one epoch. */
  train?: { seqlen: number; windows: number };
}

/** The work of one stage, in the units of Throughput's rates (0 where a stage has none). */
export interface StageWork {
  stage: string;
  /** Brute-force k-means distance evaluations (before the accelerated k-means' pruning). */
  kmeans_evals: number;
  /** FLOPs of the general matmul (dense linears, attention, lm_head). */
  matmul_flops: number;
  /** Dense-equivalent FLOPs (2 * in * out per token) of linears run as codebook kernels. */
  codebook_flops: number;
  /** Bytes streamed by memory-bound dense kernels (matvec, KV cache, scatter and decode). */
  dense_bytes: number;
  /** Bytes of packed codes and codebooks streamed by the codebook matvec. */
  codebook_bytes: number;
}

/** Rates measured on one adapter (src/bench/timeplan.ts). */
export interface Throughput {
  adapter: string;
  matmul_flops_per_s: number;
  codebook_flops_per_s: number;
  /** Distance evaluations computed per second by a whole accelerated k-means run. */
  kmeans_evals_per_s: number;
  /** Computed / brute-force distance evaluations of that run (1: no pruning known). */
  kmeans_pruning: number;
  dense_bytes_per_s: number;
  codebook_bytes_per_s: number;
  /** Wall seconds the measurement took, and the shapes it used (informative). */
  measure_seconds?: number;
  shapes?: Record<string, string>;
}

/** Held-out windows as src/finetune/calib.ts sampleWindows takes them. */
export function heldOutWindows(samples: number, holdout: number): number {
  return samples >= 2 ? Math.max(1, Math.round(samples * holdout)) : 0;
}

const zero = (stage: string): StageWork => ({
  stage,
  kmeans_evals: 0,
  matmul_flops: 0,
  codebook_flops: 0,
  dense_bytes: 0,
  codebook_bytes: 0,
});

/** Attention FLOPs of one forward over one window of T tokens in one block (S = K^T Q, P V). */
export function attentionFlops(cfg: ModelConfig, T: number): number {
  return 4 * cfg.heads * cfg.headDim * T * T;
}

/** Work of the cluster, finetune, eval, eval-original and generate stages. */
export function stageWork(cfg: ModelConfig, s: TimePlanSettings): StageWork[] {
  const lins = linearNames(0, cfg);
  const P = lins.reduce((a, l) => a + l.in * l.out, 0);
  const out: StageWork[] = [];

  const cluster = zero("cluster");
  for (const l of lins) {
    const N = (l.in / s.splits) * Math.ceil(l.out / s.d);
    cluster.kmeans_evals += s.splits * N * s.n * (s.iters + 1) * s.restarts;
  }
  cluster.kmeans_evals *= cfg.layers;
  out.push(cluster);

  if (s.finetune) {
    const T = s.calibSeqlen, A = attentionFlops(cfg, T);
    const windows = s.calibSamples;
    const held = heldOutWindows(windows, s.holdout);
    const train = windows - held;
    const select = held > 0 ? held : train;
    const fwd = 2 * P * T + A;
    const dxP = lins.filter((l) => ["o", "gate", "up", "down"].includes(l.kind))
      .reduce((a, l) => a + l.in * l.out, 0);
    const bwd = 2 * P * T + 2 * dxP * T + 2.5 * A;
    const teacher = windows * fwd * (s.extraTerm ? 2 : 1);
    const epoch = train * (fwd + bwd) + select * fwd;
    const perBlock = teacher + select * fwd + s.epochs * epoch + windows * fwd;
    const ft = zero("finetune");
    ft.matmul_flops = cfg.layers * perBlock;
    ft.dense_bytes = cfg.layers * s.epochs * train * 16 * P;
    out.push(ft);
  }

  const windows = Math.max(1, Math.floor(s.evalTokens / s.evalSeqlen));
  const tokens = windows * s.evalSeqlen;
  const extra = cfg.layers * windows * attentionFlops(cfg, s.evalSeqlen) +
    2 * cfg.vocab * cfg.hidden * tokens;
  const ev = zero("eval");
  ev.codebook_flops = 2 * P * cfg.layers * tokens;
  ev.matmul_flops = extra;
  out.push(ev);
  const orig = zero("eval-original");
  orig.matmul_flops = 2 * P * cfg.layers * tokens + extra;
  out.push(orig);

  if (s.train) {
    // The teacher: one forward of the original over every window. Training, one epoch: per
    // window a forward, the recomputed forward and the backward (dX and dW, about two forwards),
    // plus ten held-out evaluations of a tenth of the windows (about one forward per window).
    const T = s.train.seqlen, W = s.train.windows;
    const fwd = cfg.layers * (2 * P * T + attentionFlops(cfg, T)) + 2 * cfg.vocab * cfg.hidden * T;
    const teacher = zero("teacher");
    teacher.matmul_flops = W * fwd;
    out.push(teacher);
    const train = zero("train");
    train.matmul_flops = 5 * W * fwd;
    out.push(train);
  }

  const gen = zero("generate");
  let perBlock = 0;
  for (const l of lins) perBlock += codebookGpuBytes(l.in, l.out, s.d, s.n, s.splits);
  const G = s.newTokens;
  const kvPerToken = cfg.layers * 2 * cfg.kvHeads * cfg.headDim * 4;
  gen.codebook_bytes = G * cfg.layers * perBlock;
  gen.dense_bytes = G * cfg.vocab * cfg.hidden * 4 + kvPerToken * (G * (G + 1)) / 2;
  out.push(gen);
  return out;
}

/** Seconds of one stage's work at the given rates. */
export function estimateSeconds(w: StageWork, t: Throughput): number {
  return w.kmeans_evals * t.kmeans_pruning / t.kmeans_evals_per_s +
    w.matmul_flops / t.matmul_flops_per_s +
    w.codebook_flops / t.codebook_flops_per_s +
    w.dense_bytes / t.dense_bytes_per_s +
    w.codebook_bytes / t.codebook_bytes_per_s;
}

/** "42 s", "41 min", "3.2 h", "5.1 d". */
export function humanSeconds(s: number): string {
  if (!Number.isFinite(s)) return "?";
  if (s < 90) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min`;
  if (s < 48 * 3600) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

const RATES = [
  "matmul_flops_per_s",
  "codebook_flops_per_s",
  "kmeans_evals_per_s",
  "dense_bytes_per_s",
  "codebook_bytes_per_s",
] as const;

/**
 * A Throughput from parsed JSON: a bare throughput object or a `plan --measure --json` output
 * (its `throughput`). Throws an Error with a one-line message naming the bad field.
 */
export function parseThroughput(json: unknown): Throughput {
  const obj = json !== null && typeof json === "object" && "throughput" in json
    ? (json as { throughput: unknown }).throughput
    : json;
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    throw new Error("not a throughput object (expected the output of plan --measure --json)");
  }
  const o = obj as Record<string, unknown>;
  const positive = (k: string, v: unknown) => {
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
      throw new Error(`"${k}" must be a positive number, got ${JSON.stringify(v) ?? "nothing"}`);
    }
    return v;
  };
  const t: Throughput = {
    adapter: typeof o.adapter === "string" ? o.adapter : "unknown adapter",
    matmul_flops_per_s: 0,
    codebook_flops_per_s: 0,
    kmeans_evals_per_s: 0,
    kmeans_pruning: o.kmeans_pruning === undefined
      ? 1
      : positive("kmeans_pruning", o.kmeans_pruning),
    dense_bytes_per_s: 0,
    codebook_bytes_per_s: 0,
  };
  for (const k of RATES) t[k] = positive(k, o[k]);
  if (typeof o.measure_seconds === "number") t.measure_seconds = o.measure_seconds;
  return t;
}
