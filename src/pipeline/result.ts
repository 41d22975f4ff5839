// What a compress run takes and gives: its settings and its result (report.json), shared by the
// pipeline and the report so neither imports the other.
import type { ClusterSettings, MatrixPlan } from "../cluster/plan.ts";
import type { MatrixFacts } from "../cluster/stage.ts";
import type { EvalResult } from "../eval/perplexity.ts";
import type { BlockReport, FinetuneSettings } from "../finetune/stage.ts";
import type { DataFormat } from "../train/data.ts";
import type { TrainReport, TrainSettings } from "../train/stage.ts";

export interface CompressSettings {
  model: string;
  out: string;
  work: string;
  method: "cluscomp" | "rtn" | "gptq";
  cluster: ClusterSettings;
  rtn: { bits: number; group: number };
  /** --method gptq: bits, group, act-order, damping. */
  gptq?: { bits: number; group: number; actOrder: boolean; damp: number };
  eval?: { text: string; seqlen: number; maxWindows?: number };
  /** Absent: no finetuning. */
  finetune?: {
    calib: string;
    samples: number;
    seqlen: number;
    holdout: number;
    train: FinetuneSettings;
  };
  /**
   * Calibration text and windows of the stats stage (--weighting activations, --method gptq);
   * absent: those of `finetune`, when given. The windows are finetuning's (src/finetune/calib.ts).
   */
  calib?: { file: string; samples: number; seqlen: number; holdout: number; seed: number };
  /**
   * Whole-model distillation from the original model after block-wise finetuning (the
   * compressed folder's codebooks train on the teacher's top-k distribution). Absent: none.
   */
  recover?: TrainCompressedSettings;
  gpuBudget: number;
  /** Recompute from this stage on. */
  restart?: string;
}

export interface CompressResult {
  method: string;
  model: string;
  out: string;
  bits_per_weight: number;
  stored_bits_per_weight: number;
  /** The original's linear weights as stored: 16 for F16 / BF16, 32 for F32. */
  original_bits_per_weight: number;
  plan?: MatrixPlan[];
  blocks: { layer: number; facts: MatrixFacts[]; resumed: boolean }[];
  finetune?: {
    settings: CompressSettings["finetune"];
    blocks: BlockReport[];
    seconds: number;
  };
  /** compress --recover: the distillation's report. */
  recover?: { report: TrainReport; settings: TrainSettings; data: FinetuneModelResult["data"] };
  ppl_original?: number;
  ppl_compressed?: number;
  eval?: { original: Omit<EvalResult, "firstLogits">; compressed: Omit<EvalResult, "firstLogits"> };
  seconds: { cluster: number; finetune: number; export: number; eval: number; recover?: number };
  gpu_peak_bytes: number;
  /** Peak GPU bytes held during each stage run here (not for stages resumed from checkpoints). */
  gpu_peak: Record<string, number>;
  /**
   * Peak host bytes of the large arrays each stage run here held (src/util/hostmeter.ts: the
   * activation streams, a weight matrix being uploaded, a unit being written; not the RSS).
   */
  host_peak: Record<string, number>;
}

export interface FinetuneModelSettings {
  /** The compressed (cluscomp) folder to train. */
  model: string;
  out: string;
  work: string;
  /** Training data: plain text, JSON Lines {"text"} or Alpaca JSON Lines. */
  data?: string;
  format: "auto" | DataFormat;
  /** Held-out data; else `holdout` of the training windows (a fraction, or a count). */
  evalData?: string;
  holdout: number;
  /** The full-precision teacher folder: the loss becomes distillation from its distribution. */
  teacher?: string;
  /** Without --data: the teacher writes this many tokens of training text itself. */
  teacherData?: number;
  /** Teacher distribution kept per position: its k most probable tokens. */
  topk: number;
  /** Softmax temperature of the teacher's distribution (and of its own text). */
  temperature: number;
  /** Steps in all; null: `epochs` passes over the training windows. In `train`, a negative
   * warmup means 5% of the steps and a negative evalEvery ten evaluations. */
  steps: number | null;
  epochs: number;
  train: Omit<TrainSettings, "steps">;
  /** GPU bytes the teacher may hold while it runs. */
  gpuBudget: number;
  restart?: string;
}

export interface FinetuneModelResult {
  model: string;
  out: string;
  teacher: string | null;
  data: {
    source: string;
    format: DataFormat;
    windows: number;
    evalWindows: number;
    tokens: number;
  };
  settings: TrainSettings;
  report: TrainReport;
  ppl_before: number;
  ppl_after: number;
  seconds: number;
}

/** What trainCompressed needs of the settings (finetune and compress --recover share it). */
export type TrainCompressedSettings = Omit<
  FinetuneModelSettings,
  "model" | "out" | "work" | "restart"
>;
