// The compress pipeline's calibration statistics: whether a run needs them (--weighting
// activations, or a method that reads them), the calibration windows they come from, and the
// stats stage (src/cluster/stats.ts) as a step of the run.
import {
  type BlockStats,
  layerStats,
  type StatsContext,
  type StatsSettings,
  statsStage,
} from "../cluster/stats.ts";
import { UserError } from "../errors.ts";
import { sampleWindows } from "../finetune/calib.ts";
import type { Gpu } from "../gpu/device.ts";
import type { ModelConfig } from "../io/config.ts";
import { sha256 } from "../io/hash.ts";
import type { Method } from "../method/method.ts";
import type { WeightSource } from "../model/weights.ts";
import type { StageRunner } from "../runner/stage.ts";
import type { CompressSettings } from "./result.ts";

export interface StatsRun {
  /** The stats stage's settings in the manifest (a change recomputes it and every later stage). */
  settings: StatsSettings;
  /** A hash of the settings, for caches keyed by the statistics. */
  key: string;
  full: boolean;
  /**
   * Block `layer`'s statistics: computed in memory (for planning) until `run` has run the stage,
   * then read from its units.
   */
  stats: (layer: number) => Promise<BlockStats>;
  /** Runs the stats stage (resuming its units). */
  run(runner: StageRunner): Promise<void>;
}

/** What statistics a run needs: none, the diagonals, or the Gram matrices too. */
export function statsNeeded(s: CompressSettings, method: Method): "none" | "diag" | "full" {
  const m = method.needsStats ?? "none";
  if (m !== "none") return m;
  return method.name === "cluscomp" && s.cluster.weighting === "activations" ? "diag" : "none";
}

/** The run's statistics, or null when it needs none. */
export async function prepareStats(
  s: CompressSettings,
  method: Method,
  gpu: () => Promise<Gpu>,
  cfg: ModelConfig,
  src: WeightSource,
  calibText: (file: string) => Promise<{ text: string; ids: Int32Array }>,
): Promise<StatsRun | null> {
  const need = statsNeeded(s, method);
  if (need === "none") return null;
  const calib = s.calib ??
    (s.finetune && {
      file: s.finetune.calib,
      samples: s.finetune.samples,
      seqlen: s.finetune.seqlen,
      holdout: s.finetune.holdout,
      seed: s.finetune.train.seed,
    });
  if (!calib) {
    const why = method.needsStats && method.needsStats !== "none"
      ? `--method ${method.name}`
      : "--weighting activations";
    throw new UserError(`compress: ${why} needs calibration text: give --calib FILE`);
  }
  const { text, ids } = await calibText(calib.file);
  const { train } = sampleWindows(ids, calib, calib.file);
  const settings: StatsSettings = {
    text: await sha256(text),
    samples: calib.samples,
    seqlen: calib.seqlen,
    holdout: calib.holdout,
    seed: calib.seed,
  };
  const full = need === "full";
  const ctx = async (): Promise<StatsContext> => ({ gpu: await gpu(), cfg, src, windows: train });
  // Before the stage has run (planning): per layer in memory, kept for the run.
  const early = new Map<number, Promise<BlockStats>>();
  let read: ((layer: number) => Promise<BlockStats>) | null = null;
  return {
    settings,
    key: await sha256(JSON.stringify(settings)),
    full,
    stats: (layer) => {
      if (read) return read(layer);
      let p = early.get(layer);
      if (!p) {
        p = ctx().then((c) => layerStats(c, layer, full));
        early.set(layer, p);
      }
      return p;
    },
    async run(runner) {
      read = await statsStage(runner, await ctx(), full);
      early.clear();
    },
  };
}
