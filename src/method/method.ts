// A compression method: how the pipeline plans a model's bits, quantizes one block into a work
// unit, exports that unit's tensors and describes the folder's quantization_config. One file per
// method (cluscomp.ts, rtn.ts, gptq.ts); compress() picks one from `methods` by name.
import type { ClusterSettings, MatrixPlan } from "../cluster/plan.ts";
import type { MatrixFacts } from "../cluster/stage.ts";
import type { BlockStats } from "../cluster/stats.ts";
import type { QuantizationConfig, TensorBytes } from "../format/compressed.ts";
import type { Gpu } from "../gpu/device.ts";
import type { LinearKind, ModelConfig } from "../io/config.ts";
import type { WeightSource } from "../model/weights.ts";

/** What a method reads from a run's settings (a part of CompressSettings). */
export interface MethodSettings {
  /** The work directory (a method may cache its plan there). */
  work: string;
  cluster: ClusterSettings;
  rtn: { bits: number; group: number };
  /**
   * Calibration statistics of block `layer`'s linear inputs (src/cluster/stats.ts), when the run
   * gathers them (--weighting activations, or a method that needs them).
   */
  stats?: (layer: number) => Promise<BlockStats>;
  /** What `stats` are computed from (a hash of the calibration text and settings): for caches. */
  statsKey?: string;
  /** --method gptq: bits, group, act-order (static groups), damping (fraction of mean diag H). */
  gptq?: { bits: number; group: number; actOrder: boolean; damp: number };
}

/** A method's plan for one model: its bits and what it needs to quantize and export. */
export interface MethodPlan {
  bits: { total: number; stored: number };
  /** The per-matrix plan for the report, when the method has one. */
  matrices?: MatrixPlan[];
  /** This method's stage settings as kept in the manifest (a change recomputes the stage). */
  settings: unknown;
  /** The plan, as one progress note. */
  note: string;
  /** One block's work unit: its tensors and per-matrix facts. */
  quantizeBlock(
    gpu: Gpu,
    layer: number,
    onMatrix?: (kind: LinearKind, iter: number, objective: number) => void,
  ): Promise<{ tensors: TensorBytes[]; facts: MatrixFacts[] }>;
  /** A unit's tensors as exported (stored dtypes, packed codes). */
  blockTensors(tensors: TensorBytes[]): TensorBytes[];
  /** config.json's quantization_config for the whole model. */
  quantConfig(): QuantizationConfig;
}

export interface Method {
  name: "cluscomp" | "rtn" | "gptq";
  /**
   * The calibration statistics it reads through MethodSettings.stats: "diag" the second moments
   * only, "full" the Gram matrices too (GPTQ's Hessians). Absent: "none".
   */
  needsStats?: "none" | "diag" | "full";
  /** The name of its block stage in the work directory ("cluster/block-000", ...). */
  stage: string;
  /** Whether its units hold codebooks that finetuning can tune. */
  finetunable: boolean;
  /** Plans the model; `inputs` is the hash of the input files (a key for cached plans). */
  plan(
    cfg: ModelConfig,
    src: WeightSource,
    s: MethodSettings,
    inputs: string,
  ): Promise<MethodPlan>;
}
