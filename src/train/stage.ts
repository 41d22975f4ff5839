// The train stage: whole-model training of a compressed model's codebooks (codes fixed; norms
// and the LM head optionally) on next-token loss, with gradient accumulation over `batch`
// windows per step, a learning-rate schedule, held-out evaluation every `evalEvery` steps and
// the best evaluation's tensors kept. Its units: the initial evaluation, one per segment of
// `evalEvery` steps (the trainer's full state after it: codebooks and AdamW moments), and the
// best tensors so far; a resume continues after the last finished segment with the same bytes.
import { z } from "zod";
import type { Gpu } from "../gpu/device.ts";
import { decodeSafetensors, encodeSafetensors } from "../io/safetensors.ts";
import type { StageRunner } from "../runner/stage.ts";
import { Rng } from "../util/rng.ts";
import { CodebookTrainer, type TrainWindow } from "./codebook_trainer.ts";
import { learningRate, type ScheduleKind } from "./schedule.ts";

export interface TrainSettings {
  seqlen: number;
  /** Windows per optimizer step (gradients accumulated one window at a time). */
  batch: number;
  /** Optimizer steps in all. */
  steps: number;
  lr: number;
  warmup: number;
  schedule: ScheduleKind;
  /** Held-out evaluation (and a checkpoint) every this many steps, and after the last. */
  evalEvery: number;
  trainNorms: boolean;
  trainHead: boolean;
  /** Weight of the teacher's soft targets where windows carry them (1: distillation only). */
  kdWeight: number;
  weightDecay: number;
  seed: number;
}

export interface TrainReport {
  steps: number;
  /** Tokens whose loss counted over all steps. */
  tokens: number;
  /** Held-out mean NLL before training, and at each evaluation. */
  initialNll: number;
  evals: { step: number; nll: number }[];
  /** Mean training loss of each step, and its learning rate. */
  losses: { step: number; loss: number; lr: number }[];
  /** The evaluation whose tensors are kept (0: none improved on the input model). */
  bestStep: number;
  bestNll: number;
  evalTokens: number;
  seconds: number;
}

export interface TrainInput {
  gpu: Gpu;
  /** The compressed folder whose codebooks train. */
  model: string;
  runner: StageRunner;
  train: TrainWindow[];
  eval: TrainWindow[];
  settings: TrainSettings;
  /** GPU bytes the trainer may hold: over it, the code indexes stay on the host. */
  gpuMemory: number;
}

const Progress = z.object({
  step: z.number().int().nonnegative(),
  tokens: z.number().int().nonnegative(),
  initialNll: z.number(),
  evalTokens: z.number().int().nonnegative(),
  evals: z.array(z.object({ step: z.number().int(), nll: z.number() })),
  losses: z.array(z.object({ step: z.number().int(), loss: z.number(), lr: z.number() })),
  bestStep: z.number().int().nonnegative(),
  bestNll: z.number(),
  seconds: z.number(),
});
type Progress = z.infer<typeof Progress>;

const segmentUnit = (end: number) => `train/step-${String(end).padStart(7, "0")}`;
export const BEST_UNIT = "train/best";
const BestInfo = z.object({ step: z.number().int().positive(), nll: z.number() });

/**
 * The windows of each optimizer step (1-based): epochs of a seeded shuffle, `batch` each. The
 * shuffle of the current epoch is made once, not per step.
 */
export class StepWindows {
  private epoch = -1;
  private order: number[] = [];
  constructor(readonly n: number, readonly batch: number, readonly seed: number) {}

  of(step: number): number[] {
    const perEpoch = Math.ceil(this.n / this.batch);
    const epoch = Math.floor((step - 1) / perEpoch), k = (step - 1) % perEpoch;
    if (epoch !== this.epoch) {
      this.order = Array.from({ length: this.n }, (_, i) => i);
      const rng = new Rng(this.seed * 104729 + epoch);
      for (let i = this.n - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        [this.order[i], this.order[j]] = [this.order[j], this.order[i]];
      }
      this.epoch = epoch;
    }
    return this.order.slice(k * this.batch, Math.min(this.n, (k + 1) * this.batch));
  }
}

/** Ends of the segments: every evalEvery steps, and the last step. */
function segmentEnds(steps: number, every: number): number[] {
  const ends: number[] = [];
  for (let e = every; e < steps; e += every) ends.push(e);
  ends.push(steps);
  return ends;
}

const toTensors = (m: Map<string, Float32Array>) =>
  [...m].map(([name, v]) => ({
    name,
    dtype: "F32" as const,
    shape: [v.length],
    data: new Uint8Array(v.buffer, v.byteOffset, v.byteLength),
  }));

function fromUnit(data: Uint8Array, file: string): Map<string, Float32Array> {
  return new Map(
    decodeSafetensors(data, file).map((t) => [
      t.name,
      new Float32Array(t.data.slice().buffer),
    ]),
  );
}

/**
 * Trains, resuming from the work directory. Returns the report and the best tensors (HF names,
 * f32; empty when no evaluation improved on the input model).
 */
export async function trainStage(
  inp: TrainInput,
): Promise<{ report: TrainReport; best: Map<string, Float32Array> }> {
  const { gpu, runner, settings: s } = inp;
  if (inp.train.length === 0) throw new Error("train: no training windows");
  if (inp.eval.length === 0) throw new Error("train: no held-out windows");
  const start = performance.now();
  const trainer = await CodebookTrainer.fromFolder(gpu, inp.model, {
    seqlen: s.seqlen,
    trainNorms: s.trainNorms,
    trainHead: s.trainHead,
    kdWeight: s.kdWeight,
    weightDecay: s.weightDecay,
    // A step's windows go layer by layer together, so an offloaded index moves twice per step.
    batch: s.batch,
    indexOnHost: "auto",
    gpuMemory: inp.gpuMemory,
  });
  if (trainer.indexOnHost) {
    runner.progress.note("train", "code indexes kept on the host (over the GPU memory budget)");
  }
  try {
    const evalNll = () => trainer.evaluate(inp.eval);
    // Where training stands: the initial evaluation, then each finished segment.
    let at: Progress | null = null;
    const first = await runner.unit(
      "train",
      {
        name: "train/initial",
        file: "train/initial.json",
        info: z.object({ nll: z.number(), tokens: z.number().int() }),
        run: async () => {
          const r = await evalNll();
          return { data: new TextEncoder().encode(JSON.stringify(r)), info: r };
        },
      },
      0,
      1,
    );
    const fresh: Progress = {
      step: 0,
      tokens: 0,
      initialNll: first.info.nll,
      evalTokens: first.info.tokens,
      evals: [],
      losses: [],
      bestStep: 0,
      bestNll: first.info.nll,
      seconds: 0,
    };
    const ends = segmentEnds(s.steps, s.evalEvery);
    const windowsOf = new StepWindows(inp.train.length, s.batch, s.seed);
    // The trainer holds the state after `live` steps (0: the input model).
    let live = 0;
    const units = ends.map((end, i) => ({
      name: segmentUnit(end),
      file: `${segmentUnit(end)}.safetensors`,
      info: Progress,
      fields: { step: end },
      run: async () => {
        const begin = i === 0 ? 0 : ends[i - 1];
        const p: Progress = structuredClone(at ?? fresh);
        if (live !== begin) {
          const prev = await runner.load(segmentUnit(begin), Progress);
          if (!prev) throw new Error(`train: the state after step ${begin} is missing`);
          const state = fromUnit(prev.data, runner.work.path(`${segmentUnit(begin)}.safetensors`));
          await trainer.load(state, begin);
          Object.assign(p, prev.info);
        }
        const t0 = performance.now();
        for (let step = begin + 1; step <= end; step++) {
          // Decay reaches 0 one step after the last, so the last step still learns.
          const lr = learningRate(step, {
            lr: s.lr,
            warmup: s.warmup,
            total: s.steps + 1,
            schedule: s.schedule,
          });
          const batch = windowsOf.of(step).map((j) => inp.train[j]);
          const loss = await trainer.step(batch, lr);
          p.losses.push({ step, loss, lr });
          p.tokens += batch.reduce((a, w) => a + counted(w), 0);
          runner.progress.update({ stage: "train", done: step - 1, total: s.steps, loss, lr });
        }
        live = end;
        const ev = await evalNll();
        p.step = end;
        p.evals.push({ step: end, nll: ev.nll });
        if (ev.nll < p.bestNll) {
          // The best tensors first: a finished segment always has its best kept.
          await runner.keep(BEST_UNIT, `${BEST_UNIT}.safetensors`, {
            data: encodeSafetensors(toTensors(await trainer.trained())),
            info: { step: end, nll: ev.nll },
          });
          p.bestStep = end;
          p.bestNll = ev.nll;
        }
        p.seconds += (performance.now() - t0) / 1000;
        const state = await trainer.state();
        return {
          data: encodeSafetensors(toTensors(state.tensors)),
          info: p,
          fields: { heldout_nll: ev.nll },
        };
      },
      after: async () => {
        // Only the latest segment's state is needed to resume.
        const latest = Object.keys(runner.work.units()).filter((u) => u.startsWith("train/step-"))
          .sort().pop();
        await runner.prune((u) => u.startsWith("train/step-") && u !== latest);
      },
    }));
    // Earlier segments' units are pruned once a later one is kept: start at the latest kept.
    let from = 0;
    for (let i = ends.length - 1; i > 0 && from === 0; i--) {
      if (await runner.done(segmentUnit(ends[i]), Progress)) from = i;
    }
    for (let i = from; i < units.length; i++) {
      const r = await runner.unit("train", units[i], i, units.length);
      at = r.info;
    }
    const final = at!;
    let best = new Map<string, Float32Array>();
    if (final.bestStep > 0) {
      const kept = await runner.load(BEST_UNIT, BestInfo);
      if (!kept || kept.info.step !== final.bestStep) {
        throw new Error(`train: the best tensors (step ${final.bestStep}) are missing`);
      }
      best = fromUnit(kept.data, runner.work.path(`${BEST_UNIT}.safetensors`));
    }
    const report: TrainReport = {
      steps: final.step,
      tokens: final.tokens,
      initialNll: final.initialNll,
      evals: final.evals,
      losses: final.losses,
      bestStep: final.bestStep,
      bestNll: final.bestNll,
      evalTokens: final.evalTokens,
      seconds: (performance.now() - start) / 1000,
    };
    return { report, best };
  } finally {
    trainer.release();
  }
}

/** Targets of a window that count in the loss. */
function counted(w: TrainWindow): number {
  const T = w.ids.length - 1;
  if (!w.mask) return T;
  let c = 0;
  for (let t = 0; t < T; t++) c += w.mask[t] ? 1 : 0;
  return c;
}
