// Calibration windows: sampled with a seed from a tokenized text, the last slice held out.
import { UserError } from "../errors.ts";
import type { ModelConfig } from "../io/config.ts";
import { Rng } from "../util/rng.ts";

export interface CalibSettings {
  samples: number;
  seqlen: number;
  /** Fraction of windows held out for epoch selection. */
  holdout: number;
  seed: number;
}

/** The paper's 128 x 2048 for 7B-class models; 64 x 128 for small ones (hidden < 2048). */
export function defaultCalib(cfg: ModelConfig): { samples: number; seqlen: number; note: string } {
  if (cfg.hidden < 2048) {
    return {
      samples: 64,
      seqlen: Math.min(128, cfg.maxPositions),
      note:
        `small model (hidden ${cfg.hidden}): calibration scaled down to 64 windows of 128 tokens`,
    };
  }
  const seqlen = Math.min(2048, cfg.maxPositions);
  return { samples: 128, seqlen, note: `calibration: 128 windows of ${seqlen} tokens` };
}

/**
 * The paper's lr 5e-3 is for 128 x 2048 calibration tokens; with fewer tokens it overfits, so the
 * default scales it by the token count (64 x 128 tokens gives 1.6e-4).
 */
export function defaultLr(samples: number, seqlen: number): number {
  return 5e-3 * Math.min(1, (samples * seqlen) / (128 * 2048));
}

/** `samples` windows of `seqlen` tokens at seeded random offsets; the last `holdout` share held out. */
export function sampleWindows(
  ids: Int32Array,
  s: CalibSettings,
  file: string,
): { train: Int32Array[]; heldOut: Int32Array[] } {
  if (ids.length < s.seqlen + 1) {
    throw new UserError(
      `${file}: ${ids.length} tokens, fewer than one calibration window of ${s.seqlen}`,
    );
  }
  const rng = new Rng(s.seed ^ 0x5eed);
  const windows: Int32Array[] = [];
  for (let i = 0; i < s.samples; i++) {
    const start = rng.int(ids.length - s.seqlen + 1);
    windows.push(ids.slice(start, start + s.seqlen));
  }
  const held = s.samples >= 2 ? Math.max(1, Math.round(s.samples * s.holdout)) : 0;
  if (held >= s.samples) throw new UserError(`finetune: --holdout leaves no training windows`);
  return { train: windows.slice(0, s.samples - held), heldOut: windows.slice(s.samples - held) };
}
