// The memory plan: peak GPU and host bytes per stage, from the same sizes the stages allocate
// (BlockScratch, BackwardScratch, the student block, k-means' buffers, the eval batches).
import { kmeansGpuBytes } from "../cluster/kmeans.ts";
import type { ModelConfig } from "../io/config.ts";
import { linearNames } from "../io/config.ts";
import { BackwardScratch } from "../model/backward.ts";
import { blockBytes, BlockScratch } from "../model/block.ts";
import { evalPlan } from "../model/model.ts";

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
  maxBinding: number;
  finetune: boolean;
  extraTerm: boolean;
}

export interface StagePlan {
  stage: string;
  gpu_bytes: number;
  host_bytes: number;
  fits: boolean;
  note: string;
}

/** Bytes the runtime allocates for a buffer of `n` bytes (rounded up to 4, at least 16). */
const buf = (n: number) => Math.max(16, Math.ceil(n / 4) * 4);

/** The student block of finetuning for one window of T tokens (src/finetune/student.ts). */
export function studentGpuBytes(
  cfg: ModelConfig,
  T: number,
  d: number,
  n: number,
  splits: number,
  maxBinding: number,
): number {
  const H = cfg.hidden, I = cfg.intermediate;
  let bytes = 0;
  for (const lin of linearNames(0, cfg)) {
    const cols = Math.ceil(lin.out / d), items = lin.in * cols, entries = splits * n;
    // codebook, adam m and v, gradient; codes; W^T and W
    bytes += 4 * buf(entries * d * 4) + buf(items * 4) + 2 * buf(lin.in * lin.out * 4);
    // code index: piece triples + slot offsets, items, partial sums (pieces of 4096 items)
    const pieces = Math.ceil(items / 4096) + entries;
    bytes += buf((3 * pieces + entries + 1) * 4) + buf(items * 4) + buf(pieces * d * 4);
  }
  const scratch = BlockScratch.bytes(cfg, 1, T, maxBinding);
  const group = BlockScratch.split(cfg, T, T, maxBinding).headGroup;
  const backward = BackwardScratch.shapes(cfg, T, group)
    .reduce((a, [, shape]) => a + buf(shape.reduce((x, y) => x * y, 1) * 4), 0);
  const kept = 3 * buf(H * T * 4) + buf(I * T * 4);
  const own = 2 * buf(H * T * 4) + buf(T * 4) + 2 * buf(H * 4) + 3 * buf(H * T * 4);
  return bytes + scratch + backward + kept + own;
}

/** The full-precision teacher block on one window. */
export function teacherGpuBytes(cfg: ModelConfig, T: number, maxBinding: number): number {
  return blockBytes(cfg) + BlockScratch.bytes(cfg, 1, T, maxBinding) + buf(cfg.hidden * T * 4);
}

export function planMemory(cfg: ModelConfig, s: MemoryPlanSettings): StagePlan[] {
  const f32 = 4, H = cfg.hidden;
  const weights = blockBytes(cfg);
  const lins = linearNames(0, cfg);
  const biggest = lins.reduce((a, l) => (l.in * l.out > a.in * a.out ? l : a));
  const N = (biggest.in / s.splits) * Math.ceil(biggest.out / s.d);
  const plans: StagePlan[] = [];
  const stage = (name: string, gpu: number, host: number, note: string) =>
    plans.push({ stage: name, gpu_bytes: gpu, host_bytes: host, fits: gpu <= s.gpuMemory, note });

  // Cluster: one matrix at a time; the host holds it, its vectors and codes.
  stage(
    "cluster",
    kmeansGpuBytes(N, s.d, s.n, s.maxBinding),
    biggest.in * biggest.out * f32 * 3 + N * 4 * 2,
    `largest matrix ${biggest.kind} [${biggest.out}x${biggest.in}]: ${N} vectors, d=${s.d}, n=${s.n}`,
  );
  if (s.finetune) {
    const T = s.calibSeqlen;
    const gpu = Math.max(
      teacherGpuBytes(cfg, T, s.maxBinding),
      studentGpuBytes(cfg, T, s.d, s.n, s.splits, s.maxBinding),
    );
    // Calibration activations on the host: student and teacher inputs and outputs of a block
    // (plus the extra term's targets), and the checkpoint unit being written.
    const stream = s.calibSamples * H * T * f32;
    const streams = 4 + (s.extraTerm ? 1 : 0) + 2;
    stage(
      "finetune",
      gpu,
      streams * stream + weights,
      `${s.calibSamples} windows x ${T} tokens; activations ${
        (stream / 2 ** 30).toFixed(2)
      } GiB per stream on the host`,
    );
  }
  const windows = Math.max(1, Math.floor(s.evalTokens / s.evalSeqlen));
  const ev = evalPlan(cfg, s.evalSeqlen, windows, s.gpuMemory, s.maxBinding);
  stage(
    "eval",
    ev.bytes,
    weights + s.evalTokens * 4 * 2,
    `${windows} windows of ${s.evalSeqlen}; ${
      ev.resident ? "all blocks resident" : "one block at a time"
    }`,
  );
  stage("export", 0, weights * 2, "one block decoded at a time on the host");
  return plans;
}
