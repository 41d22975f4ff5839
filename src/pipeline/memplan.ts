// The memory plan: peak GPU, host and work-directory bytes per stage, from the same sizes the stages allocate
// (BlockScratch, BackwardScratch, the student block, k-means' buffers, the eval batches), and
// for generating text with the compressed model (codebook weights, KV cache, one prefill).
import { HOST_MAX_WORK, kmeansGpuBytes } from "../cluster/kmeans.ts";
import { concurrentMatrices } from "../cluster/stage.ts";
import { inputDims, statsBatch, statsBytes } from "../cluster/stats.ts";
import { codebookGpuBytes } from "../io/pack.ts";
import type { ModelConfig } from "../io/config.ts";
import { linearNames } from "../io/config.ts";
import { BackwardScratch } from "../model/backward.ts";
import { stepWindows } from "../finetune/stage.ts";
import { blockBytes, BlockScratch } from "../model/block.ts";
import { Runner } from "../model/runner.ts";
import { evalPlan } from "../model/model.ts";
import { CodebookTrainer } from "../train/codebook_trainer.ts";

export interface MemoryPlanSettings {
  d: number;
  n: number;
  splits: number;
  calibSamples: number;
  calibSeqlen: number;
  evalSeqlen: number;
  /** Tokens of the evaluation text (WikiText-2 test is about 341k with Llama-2's tokenizer). */
  evalTokens: number;
  gpuMemory: number;
  /** Disk for the work directory; when given, `fits` also needs the stage's disk peak in it. */
  disk?: number;
  maxBinding: number;
  finetune: boolean;
  extraTerm: boolean;
  /** Calibration windows per finetuning step (FinetuneSettings.batch; default 1). */
  finetuneBatch?: number;
  /**
   * Host-memory cap for finetuning's activation streams (FinetuneSettings.hostBudget): over it
   * they stream through files, one window at a time, and the host holds a few windows.
   */
  hostMemory?: number;
  /** Tokens of context for the generate row (default: the config's max_position_embeddings). */
  context?: number;
  /**
   * Whole-model training of the compressed model (deno task finetune, compress --recover): the
   * window length, training windows (the teacher's top-k is kept for each) and teacher top-k.
   * Absent: no teacher / train rows.
   */
  train?: { seqlen: number; windows: number; topk: number; batch: number };
  /**
   * The stats stage (--weighting activations: "diag"; GPTQ: "full", the Gram matrices too) over
   * the calibration windows. Absent: no stats row.
   */
  stats?: "diag" | "full";
}

export interface StagePlan {
  stage: string;
  gpu_bytes: number;
  host_bytes: number;
  /** Peak bytes of the work directory during the stage (0: it writes none). */
  disk_bytes: number;
  fits: boolean;
  note: string;
}

export const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;

/** Bytes the runtime allocates for a buffer of `n` bytes (rounded up to 4, at least 16). */
const buf = (n: number) => Math.max(16, Math.ceil(n / 4) * 4);

/**
 * The student block of finetuning for steps of `windows` windows of T tokens
 * (src/finetune/student.ts): every per-token buffer holds windows * T columns.
 */
export function studentGpuBytes(
  cfg: ModelConfig,
  T: number,
  d: number,
  n: number,
  splits: number,
  maxBinding: number,
  windows = 1,
): number {
  const H = cfg.hidden, I = cfg.intermediate, N = windows * T;
  let bytes = 0;
  for (const lin of linearNames(0, cfg)) {
    const cols = Math.ceil(lin.out / d), items = lin.in * cols, entries = splits * n;
    // codebook, adam m and v, gradient; codes; W^T and W
    bytes += 4 * buf(entries * d * 4) + buf(items * 4) + 2 * buf(lin.in * lin.out * 4);
    // code index: piece triples + slot offsets, items, partial sums (pieces of 4096 items)
    const pieces = Math.ceil(items / 4096) + entries;
    bytes += buf((3 * pieces + entries + 1) * 4) + buf(items * 4) + buf(pieces * d * 4);
  }
  const scratch = BlockScratch.bytes(cfg, windows, T, maxBinding);
  const group = BlockScratch.split(cfg, N, T, maxBinding).headGroup;
  const backward = BackwardScratch.shapes(cfg, T, group, windows)
    .reduce((a, [, shape]) => a + buf(shape.reduce((x, y) => x * y, 1) * 4), 0);
  const kept = 3 * buf(H * N * 4) + buf(I * N * 4);
  const own = 2 * buf(H * N * 4) + buf(N * 4) + 2 * buf(H * 4) + 3 * buf(H * N * 4);
  return bytes + scratch + backward + kept + own;
}

/** The full-precision teacher block on one window. */
export function teacherGpuBytes(cfg: ModelConfig, T: number, maxBinding: number): number {
  return blockBytes(cfg) + BlockScratch.bytes(cfg, 1, T, maxBinding) + buf(cfg.hidden * T * 4);
}

/** GPU bytes of one compressed block: packed codes and f32 codebooks per linear, two norms. */
export function compressedBlockBytes(
  cfg: ModelConfig,
  d: number,
  n: number,
  splits: number,
): number {
  let bytes = 2 * buf(cfg.hidden * 4);
  for (const lin of linearNames(0, cfg)) bytes += codebookGpuBytes(lin.in, lin.out, d, n, splits);
  return bytes;
}

/** What generating with a compressed model holds on the GPU, by part. */
export interface GeneratePlan {
  /** Compressed blocks, embedding, final norm, and lm_head when not tied to the embedding. */
  weights: number;
  /** K and V of every layer for `context` tokens, f32. */
  kvCache: number;
  /** Block activations for a prefill of `context` tokens in one window. */
  scratch: number;
  /** One row of logits. */
  logits: number;
  bytes: number;
}

export function generateGpuBytes(
  cfg: ModelConfig,
  context: number,
  perBlock: number,
  maxBinding: number,
): GeneratePlan {
  const embedding = buf(cfg.vocab * cfg.hidden * 4);
  const weights = cfg.layers * perBlock + embedding + buf(cfg.hidden * 4) +
    (cfg.tieEmbeddings ? 0 : embedding);
  // What the runner allocates: KV cache, and scratch for prefill chunks (logits included).
  const { kvCache, scratch } = Runner.scratchBytes(cfg, maxBinding, context);
  const logits = buf(cfg.vocab * 4);
  return { weights, kvCache, scratch, logits, bytes: weights + kvCache + scratch };
}

/** A safetensors header's share per tensor (JSON name, dtype, shape, offsets; an estimate). */
const HEADER = 96;

/** What the work directory holds (src/cluster/stage.ts, src/finetune/stage.ts), by part. */
export interface WorkDirPlan {
  /** The cluster units of every block: f32 codebooks and U8/U16 codes. */
  cluster: number;
  /** One block's finetuned codebooks (f32), its unit once the block is finished. */
  codebooks: number;
  /** One epoch checkpoint: codebooks, AdamW m and v, and the best codebooks. */
  checkpoint: number;
  /** One block's activations: student and teacher outputs of every window, f32. */
  activations: number;
  /** Blocks' activations held at once: two during a hand-over (one fewer than blocks at most). */
  activationBlocks: number;
  /** The work directory's peak during finetuning (cluster units, every block's codebooks, the
   * hand-over's activations, one checkpoint, the manifest and small files). */
  finetunePeak: number;
  /** After finetuning: cluster units, codebooks, small files. */
  after: number;
}

export function workDirBytes(
  cfg: ModelConfig,
  s: Pick<MemoryPlanSettings, "d" | "n" | "splits" | "calibSamples" | "calibSeqlen" | "finetune">,
): WorkDirPlan {
  const lins = linearNames(0, cfg);
  let cluster = 0, codebooks = 0;
  for (const lin of lins) {
    const book = s.splits * s.n * s.d * 4;
    const codes = lin.in * Math.ceil(lin.out / s.d) * (s.n <= 256 ? 1 : 2);
    cluster += book + codes + 2 * HEADER;
    codebooks += book + HEADER;
  }
  cluster *= cfg.layers;
  const checkpoint = 4 * codebooks;
  const activations = 2 * s.calibSamples * cfg.hidden * s.calibSeqlen * 4 + 2 * HEADER;
  const activationBlocks = Math.min(2, cfg.layers - 1);
  // Manifest (a record per unit), input hashes, plan cache, lock, evaluation units.
  const small = 8192 + 256 * (2 * cfg.layers + 4);
  const after = cluster + (s.finetune ? cfg.layers * codebooks : 0) + small;
  const finetunePeak = s.finetune ? after + checkpoint + activationBlocks * activations : after;
  return { cluster, codebooks, checkpoint, activations, activationBlocks, finetunePeak, after };
}

export function planMemory(cfg: ModelConfig, s: MemoryPlanSettings): StagePlan[] {
  const f32 = 4, H = cfg.hidden;
  const weights = blockBytes(cfg);
  const lins = linearNames(0, cfg);
  const biggest = lins.reduce((a, l) => (l.in * l.out > a.in * a.out ? l : a));
  const N = (biggest.in / s.splits) * Math.ceil(biggest.out / s.d);
  const plans: StagePlan[] = [];
  const disk = workDirBytes(cfg, s);
  // The stats units (src/cluster/stats.ts) stay in the work directory for the whole run.
  const statsDisk = s.stats ? cfg.layers * (statsBytes(cfg, s.stats === "full") + 8 * HEADER) : 0;
  disk.cluster += statsDisk;
  disk.finetunePeak += statsDisk;
  disk.after += statsDisk;
  const stage = (name: string, gpu: number, host: number, note: string, diskBytes: number) =>
    plans.push({
      stage: name,
      gpu_bytes: gpu,
      host_bytes: host,
      disk_bytes: diskBytes,
      fits: gpu <= s.gpuMemory && (s.disk === undefined || diskBytes <= s.disk),
      note,
    });

  if (s.stats) {
    // The full-precision block over a batch of windows, the accumulators; on the host every
    // window's block input, and the embedding table, a matrix being uploaded or a batch packed
    // and read back.
    const T = s.calibSeqlen, full = s.stats === "full";
    const B = statsBatch(cfg, s.calibSamples, T, s.maxBinding);
    const acc = statsBytes(cfg, full);
    const stream = s.calibSamples * H * T * f32, batch = B * H * T * f32;
    const table = cfg.vocab * H * f32, biggestBytes = biggest.in * biggest.out * f32;
    // The tiled Gram's token-major copy of the widest input (when it fits one binding).
    const wide = Math.max(...Object.values(inputDims(cfg))) * B * T * f32;
    const gramScratch = full && wide <= s.maxBinding ? buf(wide) : 0;
    stage(
      "stats",
      weights + BlockScratch.bytes(cfg, B, T, s.maxBinding) + buf(batch) + acc + gramScratch,
      stream + Math.max(table, biggestBytes, 2 * batch),
      `${s.calibSamples} windows x ${T} tokens, ${B} per pass; ${
        full ? "diagonals and Gram matrices" : "diagonals"
      } of ${(acc / 2 ** 20).toFixed(1)} MiB per block`,
      statsDisk,
    );
  }
  // Cluster: one matrix at a time, or a block's matrices at once when they are small and all on
  // the GPU (concurrentMatrices); the host holds each running matrix, its vectors and codes.
  // Matrices small enough to assign on the host (kmeans backend "auto") take no GPU memory.
  const onHost = N * s.n * s.d <= HOST_MAX_WORK;
  const shapes = lins.map((l) => ({
    vectors: (l.in / s.splits) * Math.ceil(l.out / s.d),
    d: s.d,
    n: s.n,
    host: l.in * l.out * f32 * 3 + (l.in / s.splits) * Math.ceil(l.out / s.d) * 4 * 2,
  }));
  const together = concurrentMatrices(shapes, s.maxBinding);
  const sum = (f: (m: typeof shapes[number]) => number) => shapes.reduce((a, m) => a + f(m), 0);
  stage(
    "cluster",
    together
      ? sum((m) => kmeansGpuBytes(m.vectors, s.d, s.n, s.maxBinding))
      : onHost
      ? 0
      : kmeansGpuBytes(N, s.d, s.n, s.maxBinding),
    together ? sum((m) => m.host) : biggest.in * biggest.out * f32 * 3 + N * 4 * 2,
    together
      ? `a block's ${lins.length} matrices at once (d=${s.d}, n=${s.n})`
      : `largest matrix ${biggest.kind} [${biggest.out}x${biggest.in}]: ${N} vectors, ` +
        `d=${s.d}, n=${s.n}${onHost ? " (assigned on the host)" : ""}`,
    disk.cluster,
  );
  if (s.finetune) {
    const T = s.calibSeqlen;
    // Windows per step as the stage picks them (the held-out share aside).
    const B = stepWindows(cfg, T, s.finetuneBatch ?? 1, s.calibSamples, s.maxBinding);
    const gpu = Math.max(
      teacherGpuBytes(cfg, T, s.maxBinding),
      studentGpuBytes(cfg, T, s.d, s.n, s.splits, s.maxBinding, B),
    );
    // Calibration activations on the host (src/finetune/stage.ts, counted by the host meter):
    // the block's student and teacher inputs, the teacher's outputs, the extra term's targets
    // and the student's outputs at the end of a block; then the inputs go and the activations
    // unit (both outputs) is written. While a teacher block uploads, one weight matrix is on the
    // host besides the inputs (and the teacher outputs, for the extra term's second pass); block
    // 0's single embedded stream is built beside the embedding table.
    const stream = s.calibSamples * H * T * f32;
    const e = s.extraTerm ? 1 : 0;
    const biggestBytes = biggest.in * biggest.out * f32;
    const table = cfg.vocab * H * f32;
    // Under a cap the student and teacher streams go through files: the host holds the windows
    // of one step (input, target, the extra term's target) and one read back.
    const streamed = s.hostMemory !== undefined && 2 * stream > s.hostMemory;
    // A step's B windows.
    const windowBytes = H * T * f32 * B;
    const host = streamed
      ? (3 + e) * windowBytes + Math.max(biggestBytes, table)
      : Math.max((4 + e) * stream, (2 + e) * stream + biggestBytes, stream + table);
    stage(
      "finetune",
      gpu,
      host,
      `${s.calibSamples} windows x ${T} tokens; activations ${
        (stream / 2 ** 30).toFixed(2)
      } GiB per stream ${
        streamed
          ? `streamed through the work directory (host cap ${gib(s.hostMemory!)})`
          : "on the host"
      }; work directory: ${disk.activationBlocks} blocks' ` +
        `activations of ${gib(disk.activations)} during a hand-over`,
      disk.finetunePeak,
    );
  }
  const windows = Math.max(1, Math.floor(s.evalTokens / s.evalSeqlen));
  const perBlock = compressedBlockBytes(cfg, s.d, s.n, s.splits);
  const evalRow = (name: string, blockBytes: number | undefined, what: string) => {
    const ev = evalPlan(cfg, s.evalSeqlen, windows, s.gpuMemory, s.maxBinding, blockBytes);
    stage(
      name,
      ev.bytes,
      weights + s.evalTokens * 4 * 2,
      `${what}: ${windows} windows of ${s.evalSeqlen}; ${
        ev.resident ? "all blocks resident" : "one block at a time"
      }`,
      disk.after,
    );
  };
  // compress --eval-text evaluates both; `eval` alone is what the compressed folder needs.
  evalRow("eval", perBlock, `compressed model (${(perBlock / 2 ** 20).toFixed(1)} MiB per block)`);
  evalRow("eval-original", undefined, "original model");
  stage("export", 0, weights * 2, "one block decoded at a time on the host", disk.after);
  if (s.train) {
    const t = s.train;
    const shapes = { d: s.d, n: s.n, splits: s.splits };
    const topk = t.windows * t.seqlen * t.topk * 8;
    const books = linearNames(0, cfg).length * s.splits * s.n * s.d * 4 * cfg.layers;
    // The teacher (the original, dense) runs first over the training windows, then is released.
    const tp = evalPlan(cfg, t.seqlen, t.windows, s.gpuMemory, s.maxBinding);
    stage(
      "teacher",
      tp.bytes,
      weights + 2 * topk,
      `original model's top-${t.topk} over ${t.windows} windows of ${t.seqlen}: ${
        gib(topk)
      } kept in the work directory`,
      disk.after + topk,
    );
    // Training: CodebookTrainer's buffers, its code indexes on the host when they would not
    // fit (as the train stage decides). Host: what the trainer keeps, the top-k rows, and a
    // checkpoint's codebooks with AdamW moments (read back, then encoded). Disk: the top-k
    // unit, the latest checkpoint (3 x codebooks) and the best codebooks.
    const mem = { batch: t.batch, indexOnHost: false };
    if (CodebookTrainer.gpuBytes(cfg, shapes, t.seqlen, s.maxBinding, mem) > s.gpuMemory) {
      mem.indexOnHost = true;
    }
    const upload = CodebookTrainer.uploadBytes(cfg, shapes, s.maxBinding, t.batch, mem);
    stage(
      "train",
      CodebookTrainer.gpuBytes(cfg, shapes, t.seqlen, s.maxBinding, mem),
      CodebookTrainer.hostBytes(cfg, shapes, s.maxBinding, mem) + topk + 6 * books,
      `whole-model codebook training, ${t.batch} windows of ${t.seqlen} per step, layer by ` +
        `layer; codebooks ${gib(books)} (AdamW; codes fixed); code indexes ${
          mem.indexOnHost ? `on the host (${gib(upload)} uploaded per step)` : "on the GPU"
        }`,
      disk.after + topk + 4 * books,
    );
  }
  const context = s.context ?? cfg.maxPositions;
  const g = generateGpuBytes(cfg, context, perBlock, s.maxBinding);
  stage(
    "generate",
    g.bytes,
    perBlock + 2 * cfg.vocab * cfg.hidden * 4,
    `context ${context}: weights ${gib(g.weights)}, KV cache ${gib(g.kvCache)}, prefill ` +
      `scratch ${gib(g.scratch)}`,
    0,
  );
  return plans;
}
