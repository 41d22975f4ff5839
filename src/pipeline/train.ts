// Whole-model finetuning of a compressed folder: training windows from a data file (or text the
// teacher writes itself), optionally the teacher's top-k distribution over them, the train
// stage, and the output folder: the input with its trained tensors replaced, plus a report.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { UserError } from "../errors.ts";
import { readQuantConfig } from "../format/compressed.ts";
import { openModel } from "../format/open.ts";
import { writeUpdatedFolder } from "../format/update.ts";
import { getGpu } from "../gpu/device.ts";
import { checkWritable } from "../io/atomic.ts";
import { sha256Files } from "../io/hash.ts";
import { decodeSafetensors, encodeSafetensors } from "../io/safetensors.ts";
import { Tokenizer } from "../io/tokenizer.ts";
import { WorkDir } from "../io/workdir.ts";
import { RunControl } from "../runner/control.ts";
import { StageRunner } from "../runner/stage.ts";
import type { TrainWindow } from "../train/codebook_trainer.ts";
import { loadTrainData, splitHeldOut } from "../train/data.ts";
import { teacherText, teacherTopK } from "../train/teacher.ts";
import { type TrainReport, type TrainSettings, trainStage } from "../train/stage.ts";
import type { Progress } from "../util/progress.ts";
import { z } from "zod";
import { inputsHash } from "./inputs.ts";
import { trainReportFiles } from "./train_report.ts";
import type {
  FinetuneModelResult,
  FinetuneModelSettings,
  TrainCompressedSettings,
} from "./result.ts";

export type { FinetuneModelResult, FinetuneModelSettings, TrainCompressedSettings };

/** The teacher's top-k rows of every training window, as one unit. */
function encodeTopK(windows: TrainWindow[], k: number): Uint8Array {
  const ids = windows.map((w) => new Uint8Array(w.teacher!.ids.buffer));
  const probs = windows.map((w) => new Uint8Array(w.teacher!.probs.buffer));
  const T = windows[0].ids.length - 1;
  const shape = [windows.length, T, k];
  return encodeSafetensors([
    { name: "ids", dtype: "I32", shape, data: ids },
    { name: "probs", dtype: "F32", shape, data: probs },
  ]);
}

function decodeTopK(data: Uint8Array, file: string, windows: TrainWindow[], k: number) {
  const t = decodeSafetensors(data, file);
  const get = (name: string) => t.find((x) => x.name === name)!.data;
  const ids = new Int32Array(get("ids").slice().buffer),
    probs = new Float32Array(get("probs").slice().buffer);
  const T = windows[0].ids.length - 1, row = T * k;
  return windows.map((w, i) => ({
    ...w,
    teacher: {
      k,
      ids: ids.subarray(i * row, (i + 1) * row),
      probs: probs.subarray(i * row, (i + 1) * row),
    },
  }));
}

export async function finetuneModel(
  s: FinetuneModelSettings,
  progress: Progress,
  control: RunControl = new RunControl(null),
): Promise<FinetuneModelResult> {
  const t0 = performance.now();
  if ((s.data === undefined) === (s.teacherData === undefined)) {
    throw new UserError("finetune: give --data FILE or --teacher-data N (with --teacher)");
  }
  if (s.teacherData !== undefined && !s.teacher) {
    throw new UserError("finetune: --teacher-data needs --teacher DIR");
  }
  for (const [flag, path] of [["data", s.data], ["eval-data", s.evalData]] as const) {
    if (path !== undefined && !existsSync(path)) {
      throw new UserError(`finetune: --${flag} ${path}: no such file`);
    }
  }
  const qc = await readQuantConfig(s.model);
  if (!qc || qc.quant_method !== "cluscomp") {
    throw new UserError(`${s.model}: not a cluscomp-compressed folder (quantization_config)`);
  }
  await checkWritable(s.out);
  const m = await openModel(s.model);
  // Inputs: the student's files, the data files, the teacher's files.
  await Deno.mkdir(s.work, { recursive: true }).catch(() => {});
  const inputs: Record<string, string> = {};
  const add = (prefix: string, h: Record<string, string>) => {
    for (const [k, v] of Object.entries(h)) inputs[`${prefix}/${k}`] = v;
  };
  add("model", (await inputsHash(s.model, m.index.files, s.work)).files);
  m.index.close();
  if (s.teacher) {
    const t = await openModel(s.teacher);
    add("teacher", (await inputsHash(s.teacher, t.index.files, s.work)).files);
    t.index.close();
    if (t.quant) throw new UserError(`${s.teacher}: the teacher must be a full-precision folder`);
    if (t.cfg.vocab !== m.cfg.vocab) {
      throw new UserError(
        `${s.teacher}: vocabulary ${t.cfg.vocab} differs from the student's ${m.cfg.vocab}`,
      );
    }
  }
  const dataFiles = [{ name: "train", path: s.data }, { name: "eval", path: s.evalData }]
    .filter((f): f is { name: string; path: string } => f.path !== undefined);
  add("data", await sha256Files(dataFiles, join(s.work, "input-hashes.json")));
  const data = {
    format: s.format,
    seqlen: s.train.seqlen,
    holdout: s.evalData ? null : s.holdout,
    seed: s.train.seed,
  };
  const teacher = s.teacher
    ? { topk: s.topk, temperature: s.temperature, teacherData: s.teacherData ?? null }
    : null;
  const work = await WorkDir.open(
    s.work,
    { data, teacher, train: { ...s.train, steps: s.steps, epochs: s.epochs } },
    inputs,
    s.restart,
  );
  const runner = new StageRunner(work, progress, control);
  try {
    const { report, best, data: used, settings } = await trainCompressed(s, s.model, runner);
    const result: FinetuneModelResult = {
      model: s.model,
      out: s.out,
      teacher: s.teacher ?? null,
      data: used,
      settings,
      report,
      ppl_before: Math.exp(report.initialNll),
      ppl_after: Math.exp(report.bestNll),
      seconds: (performance.now() - t0) / 1000,
    };
    await writeUpdatedFolder(s.model, s.out, best, trainReportFiles(result));
    progress.note("finetune", `wrote ${s.out}`);
    return result;
  } finally {
    control.close();
    await work.close();
  }
}

/**
 * The teacher's units (its own text, its top-k over the training windows) and the train stage,
 * on the compressed folder `model`, in the runner's work directory.
 */
export async function trainCompressed(
  s: TrainCompressedSettings,
  model: string,
  runner: StageRunner,
): Promise<
  {
    report: TrainReport;
    best: Map<string, Float32Array>;
    data: FinetuneModelResult["data"];
    settings: TrainSettings;
  }
> {
  const { work, progress } = runner;
  const gpu = await getGpu();
  const tokenizer = await Tokenizer.load(model);
  // The training text: the data file, or what the teacher writes.
  let source = s.data!;
  if (s.teacherData !== undefined) {
    const unit = "teacher/text";
    await runner.unit("teacher", {
      name: unit,
      file: `${unit}.txt`,
      info: z.object({ tokens: z.number().int() }),
      run: async () => {
        const text = await teacherText(s.teacher!, {
          tokens: s.teacherData!,
          seed: s.train.seed,
          temperature: s.temperature,
          gpu,
          onProgress: (done, total) => progress.update({ stage: "teacher-text", done, total }),
        });
        return { data: new TextEncoder().encode(text), info: { tokens: s.teacherData! } };
      },
    });
    source = work.path(`${unit}.txt`);
  }
  const loaded = await loadTrainData(source, tokenizer, {
    seqlen: s.train.seqlen,
    format: s.teacherData !== undefined ? "text" : s.format,
  });
  let train = loaded.windows, evalWindows: TrainWindow[];
  if (s.evalData) {
    evalWindows = (await loadTrainData(s.evalData, tokenizer, {
      seqlen: s.train.seqlen,
      format: s.format,
    })).windows;
  } else {
    const split = splitHeldOut(train, s.holdout, s.train.seed);
    train = split.train;
    evalWindows = split.eval;
  }
  if (evalWindows.length === 0) {
    throw new UserError("finetune: no held-out windows; give --eval-data or --holdout > 0");
  }
  if (s.teacher) {
    const unit = "teacher/topk";
    const file = `${unit}.safetensors`;
    const Info = z.object({ windows: z.number().int(), k: z.number().int() });
    const kept = await runner.unit("teacher", {
      name: unit,
      file,
      info: Info,
      run: async () => {
        const withTeacher = await teacherTopK(gpu, s.teacher!, train, s.topk, s.temperature, {
          gpuBudget: s.gpuBudget,
          onProgress: (done, total) => progress.update({ stage: "teacher", done, total }),
        });
        return {
          data: encodeTopK(withTeacher, s.topk),
          info: { windows: train.length, k: s.topk },
        };
      },
    });
    if (kept.info.windows !== train.length) {
      throw new UserError(
        `${work.path(file)}: holds ${kept.info.windows} windows, not ${train.length}`,
      );
    }
    train = decodeTopK(await runner.read(unit), work.path(file), train, s.topk);
  }
  const steps = s.steps ?? s.epochs * Math.ceil(train.length / s.train.batch);
  if (steps < 1) throw new UserError("finetune: no steps to take (--steps or --epochs)");
  // Negative warmup / evalEvery: the defaults, 5% of the steps and ten evaluations.
  const settings: TrainSettings = {
    ...s.train,
    steps,
    warmup: s.train.warmup >= 0 ? s.train.warmup : Math.round(0.05 * steps),
    evalEvery: s.train.evalEvery > 0 ? s.train.evalEvery : Math.max(1, Math.ceil(steps / 10)),
  };
  const { report, best } = await trainStage({
    gpu,
    model,
    runner,
    train,
    eval: evalWindows,
    settings,
    gpuMemory: s.gpuBudget,
  });
  return {
    report,
    best,
    settings,
    data: {
      source: s.teacherData !== undefined ? `teacher text (${s.teacherData} tokens)` : s.data!,
      format: loaded.format,
      windows: train.length,
      evalWindows: evalWindows.length,
      tokens: loaded.tokens,
    },
  };
}
