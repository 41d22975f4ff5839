// Compress settings the tests share: quick clustering (random init, few iterations) and, where
// asked, a short finetuning on the embedded kjv-llama's calibration text.
import { fileURLToPath } from "node:url";
import type { ClusterSettings } from "../src/cluster/plan.ts";
import type { CompressSettings } from "../src/pipeline/compress.ts";

export const KJV = fileURLToPath(new URL("../fixtures/kjv-llama", import.meta.url));

/** Cluster settings: no overrides, one split, f16 codebooks, 5 random-init iterations. */
export function clusterSettings(over: Partial<ClusterSettings> = {}): ClusterSettings {
  return {
    overrides: {},
    splits: 1,
    codebookDtype: "f16",
    iters: 5,
    seed: 0,
    init: "random",
    restarts: 1,
    ...over,
  };
}

/**
 * Settings compressing `model` into dir/out with work dir dir/work; with `finetune`, 16 windows
 * of 64 tokens of kjv-llama's calib.txt (2 held out), 2 epochs.
 */
export function quickSettings(
  model: string,
  dir: string,
  cluster: Partial<ClusterSettings>,
  opts: { finetune?: boolean } = {},
): CompressSettings {
  return {
    model,
    out: `${dir}/out`,
    work: `${dir}/work`,
    method: "cluscomp",
    cluster: clusterSettings(cluster),
    rtn: { bits: 4, group: 128 },
    gpuBudget: 2 ** 31,
    ...(opts.finetune
      ? {
        finetune: {
          calib: `${KJV}/calib.txt`,
          samples: 16,
          seqlen: 64,
          holdout: 0.1,
          train: { epochs: 2, lr: 1e-3, weightDecay: 0.1, patience: 2, extraTerm: false, seed: 0 },
        },
      }
      : {}),
  };
}
