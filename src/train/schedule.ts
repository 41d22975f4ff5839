// Learning-rate schedules for whole-model finetuning: linear warmup, then linear or cosine decay
// (or a constant rate).
import { UserError } from "../errors.ts";

export type ScheduleKind = "linear" | "cosine" | "constant";

export interface ScheduleSettings {
  /** Peak learning rate, reached at the end of the warmup. */
  lr: number;
  /** Warmup steps (0 = none). */
  warmup: number;
  /** Total optimizer steps; linear and cosine decay reach `minLr` at step `total`. */
  total: number;
  schedule: ScheduleKind;
  /** Floor of the decay (default 0). */
  minLr?: number;
}

/**
 * The learning rate of optimizer step `step`, counted from 1 (the first update is step 1).
 *
 * - warmup: `lr * step / warmup` for 1 <= step <= warmup (the ramp starts from 0 at step 0, so
 *   step 1 uses `lr / warmup` and step `warmup` uses the full `lr`);
 * - then `linear`: `minLr + (lr - minLr) * (total - step) / (total - warmup)`, which is `minLr` at
 *   step `total` (the last step of a run of `total` steps uses `minLr`, 0 by default);
 * - `cosine`: `minLr + (lr - minLr) * (1 + cos(pi * (step - warmup) / (total - warmup))) / 2`;
 * - `constant`: `lr`.
 *
 * Steps past `total` keep the value at `total`.
 */
export function learningRate(step: number, s: ScheduleSettings): number {
  checkSchedule(s);
  if (!Number.isSafeInteger(step) || step < 0) {
    throw new Error(`learningRate: step ${step} must be a non-negative integer`);
  }
  const minLr = s.minLr ?? 0;
  if (s.warmup > 0 && step <= s.warmup) return (s.lr * step) / s.warmup;
  if (s.schedule === "constant") return s.lr;
  const span = s.total - s.warmup;
  if (span <= 0) return s.lr;
  const frac = Math.min(1, (step - s.warmup) / span);
  if (s.schedule === "linear") return minLr + (s.lr - minLr) * (1 - frac);
  return minLr + (s.lr - minLr) * 0.5 * (1 + Math.cos(Math.PI * frac));
}

/** Throws a UserError naming the first bad setting. */
export function checkSchedule(s: ScheduleSettings): void {
  if (!(Number.isFinite(s.lr) && s.lr >= 0)) {
    throw new UserError(`learning rate must be a non-negative number, got ${s.lr}`);
  }
  if (!Number.isSafeInteger(s.total) || s.total < 1) {
    throw new UserError(`total steps must be a positive integer, got ${s.total}`);
  }
  if (!Number.isSafeInteger(s.warmup) || s.warmup < 0 || s.warmup > s.total) {
    throw new UserError(
      `warmup steps must be an integer from 0 to the total of ${s.total}, got ${s.warmup}`,
    );
  }
  if (!["linear", "cosine", "constant"].includes(s.schedule)) {
    throw new UserError(
      `schedule must be linear, cosine or constant, got ${JSON.stringify(s.schedule)}`,
    );
  }
  const minLr = s.minLr ?? 0;
  if (!(Number.isFinite(minLr) && minLr >= 0 && minLr <= s.lr)) {
    throw new UserError(`minimum learning rate must be in [0, ${s.lr}], got ${minLr}`);
  }
}
