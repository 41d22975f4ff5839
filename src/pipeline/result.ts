// What a compress run takes and gives: its settings and its result (report.json), shared by the
// pipeline and the report so neither imports the other.
import type { ClusterSettings, MatrixPlan } from "../cluster/plan.ts";
import type { MatrixFacts } from "../cluster/stage.ts";
import type { EvalResult } from "../eval/perplexity.ts";
import type { BlockReport, FinetuneSettings } from "../finetune/stage.ts";

export interface CompressSettings {
  model: string;
  out: string;
  work: string;
  method: "cluscomp" | "rtn";
  cluster: ClusterSettings;
  rtn: { bits: number; group: number };
  eval?: { text: string; seqlen: number; maxWindows?: number };
  /** Absent: no finetuning. */
  finetune?: {
    calib: string;
    samples: number;
    seqlen: number;
    holdout: number;
    train: FinetuneSettings;
  };
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
  ppl_original?: number;
  ppl_compressed?: number;
  eval?: { original: Omit<EvalResult, "firstLogits">; compressed: Omit<EvalResult, "firstLogits"> };
  seconds: { cluster: number; finetune: number; export: number; eval: number };
  gpu_peak_bytes: number;
  /** Peak GPU bytes held during each stage run here (not for stages resumed from checkpoints). */
  gpu_peak: Record<string, number>;
}
