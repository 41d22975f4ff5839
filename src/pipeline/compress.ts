// The compress pipeline: load, cluster (or RTN) per block into the work directory, export the
// compressed folder, and optionally evaluate original and compressed perplexity.
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { MatrixFacts } from "../cluster/stage.ts";
import { UserError } from "../errors.ts";
import { type EvalResult, evaluatePerplexity } from "../eval/perplexity.ts";
import { writeCompressedModel } from "../format/compressed.ts";
import { getGpu } from "../gpu/device.ts";
import { LINEAR_KINDS } from "../io/config.ts";
import { decodeSafetensors, encodeSafetensors } from "../io/safetensors.ts";
import { readText } from "../io/text.ts";
import { Tokenizer } from "../io/tokenizer.ts";
import { sampleWindows } from "../finetune/calib.ts";
import { finetune, type FinetuneInput, finetuneUnit } from "../finetune/stage.ts";
import { openModel } from "../format/open.ts";
import { methods } from "../method/mod.ts";
import { z } from "zod";
import { inputsHash } from "./inputs.ts";
import { prepareStats } from "./stats.ts";
import type { Progress } from "../util/progress.ts";
import { RunControl } from "../runner/control.ts";
import { StageRunner, type Unit } from "../runner/stage.ts";
import { originalBitsPerWeight, writeReport } from "./report.ts";
import type { CompressResult, CompressSettings } from "./result.ts";
import { withFileLock, WorkDir } from "../io/workdir.ts";
import { blockCosts, checkStage, shardUnits, type StageOptions } from "./shard.ts";
import { patchFolder } from "../format/update.ts";
import { trainCompressed } from "./train.ts";
import { checkWritable } from "../io/atomic.ts";

export type { CompressResult, CompressSettings } from "./result.ts";
export { type InputHashes, inputsHash } from "./inputs.ts";

/** What a cluster / RTN block unit keeps in its info (checked when read back). */
const BlockInfo = z.object({
  facts: z.array(z.object({
    kind: z.enum(LINEAR_KINDS),
    objective: z.number(),
    mse: z.number(),
    distanceEvals: z.number(),
    bruteForceEvals: z.number(),
    seconds: z.number(),
  })),
}) satisfies z.ZodType<{ facts: MatrixFacts[] }>;

export async function compress(
  s: CompressSettings,
  progress: Progress,
  control: RunControl = new RunControl(null),
  opts: StageOptions = {},
): Promise<CompressResult> {
  const t0 = performance.now();
  const method = methods[s.method];
  if (!method) {
    throw new UserError(
      `method must be one of ${Object.keys(methods).join(", ")} (got "${s.method}")`,
    );
  }
  if (existsSync(join(s.model, "config.json"))) {
    const raw = JSON.parse(await Deno.readTextFile(join(s.model, "config.json")));
    if (raw.quantization_config) {
      throw new UserError(`${s.model}: is already compressed; give the original model`);
    }
  }
  // A shard writes no output (and pods sharing a volume may have the same pid for the probe).
  if (!opts.shard) await checkWritable(s.out);
  const m = await openModel(s.model);
  const tokenizer = await Tokenizer.load(s.model);
  const { cfg, source, index } = m;
  // Shards starting at once: the first hashes the inputs, the others wait and read its cache.
  const inputs = await withFileLock(
    join(s.work, "plans.lock"),
    () => inputsHash(s.model, index.files, s.work),
    (m) => progress.note("plan", m),
  );
  // Calibration statistics (--weighting activations, GPTQ): a stage of their own before the
  // method's; planning may read a block's statistics before the stage has run.
  // The calibration text, read and tokenized once for the stats and finetune stages.
  const calibTexts = new Map<string, Promise<{ text: string; ids: Int32Array }>>();
  const calibText = (file: string) => {
    let p = calibTexts.get(file);
    if (!p) {
      p = readText(file).then((text) => ({ text, ids: tokenizer.encode(text) }));
      calibTexts.set(file, p);
    }
    return p;
  };
  const st = await prepareStats(s, method, getGpu, cfg, source, calibText);
  // One plan for all shards: the first computes (and caches) it under this lock, the others
  // wait and read the cached plan.
  const planned = await withFileLock(
    join(s.work, "plans.lock"),
    () =>
      method.plan(cfg, source, st ? { ...s, stats: st.stats, statsKey: st.key } : s, inputs.hash),
    (m) => progress.note("plan", m),
  );
  const { bits, matrices: plan, quantizeBlock } = planned;
  progress.note("plan", planned.note);
  const ft = method.finetunable ? s.finetune : undefined;
  const stage = method.stage;
  // Settings per stage, in order: a change invalidates that stage and every later one. The host
  // cap changes where activations live, not results, so a resume may change it.
  const { hostBudget: _, ...recordedTrain } = ft?.train ?? {};
  const stages: Record<string, unknown> = {
    // Only when the run gathers statistics: other runs keep the stages (and work dirs) they had.
    ...(st ? { stats: st.settings } : {}),
    [stage]: planned.settings,
    finetune: ft ? { ...ft, train: recordedTrain } : null,
    // compress --recover: the teacher's units (top-k over the recovery windows), the train stage.
    data: s.recover
      ? { format: s.recover.format, seqlen: s.recover.train.seqlen, holdout: s.recover.holdout }
      : null,
    teacher: s.recover
      ? {
        topk: s.recover.topk,
        temperature: s.recover.temperature,
        teacherData: s.recover.teacherData ?? null,
      }
      : null,
    train: s.recover
      ? { ...s.recover.train, steps: s.recover.steps, epochs: s.recover.epochs }
      : null,
    eval: s.eval ? { ...s.eval, codebookDtype: s.cluster.codebookDtype } : null,
  };
  const gpu = await getGpu();
  checkStage(opts, stage, ft !== undefined);
  const work = await WorkDir.open(s.work, stages, inputs.files, s.restart, {
    last: opts.stage,
    shard: opts.shard,
    onWait: (m) => progress.note(stage, m),
  });
  if (work.adopted.length > 0) {
    progress.note(stage, `adopted ${work.adopted.length} units that shards finished`);
  }
  const runner = new StageRunner(work, progress, control);
  // A block's cluster (or RTN) unit: its codebooks and codes, with per-matrix facts.
  const quantizeUnit = (name: string, l: number): Unit<z.infer<typeof BlockInfo>> => ({
    name,
    file: `${name}.safetensors`,
    info: BlockInfo,
    fields: { block: l },
    run: async () => {
      const r = await quantizeBlock(gpu, l, (kind, iter, objective) =>
        progress.update({
          stage,
          done: l,
          total: cfg.layers,
          block: l,
          matrix: kind,
          iter,
          objective,
        }));
      return { data: encodeSafetensors(r.tensors), info: { facts: r.facts } };
    },
  });
  const result: CompressResult = {
    method: s.method,
    model: s.model,
    out: s.out,
    bits_per_weight: bits.total,
    original_bits_per_weight: originalBitsPerWeight(cfg, index),
    stored_bits_per_weight: bits.stored,
    plan,
    blocks: [],
    seconds: { cluster: 0, finetune: 0, export: 0, eval: 0 },
    gpu_peak_bytes: 0,
    gpu_peak: {},
    host_peak: {},
  };
  try {
    if (st) {
      runner.enter("stats", gpu);
      await st.run(runner);
    }
    runner.enter(stage, gpu);
    const unitName = (l: number) => `${stage}/block-${String(l).padStart(3, "0")}`;
    const readUnit = async (unit: string) =>
      decodeSafetensors(await runner.read(unit), work.path(`${unit}.safetensors`));
    const layers = shardUnits(
      blockCosts(cfg, plan, s.cluster),
      opts.shard,
      (m) => progress.note(stage, m),
    );
    const clustered = await runner.stage(stage, layers.map((l) => quantizeUnit(unitName(l), l)));
    result.blocks = clustered.map((u, i) => ({
      layer: layers[i],
      facts: u.info.facts,
      resumed: u.resumed,
    }));
    let t1 = performance.now();
    result.seconds.cluster = (t1 - t0) / 1000;
    if (opts.stage === stage) return result;

    runner.enter("finetune", gpu);
    if (ft) {
      const shapes = Object.fromEntries(
        plan!.map((p) => [p.kind, { n: p.n, d: p.d, splits: p.splits }]),
      ) as FinetuneInput["shapes"];
      const reports = await finetuneBlocks(ft, calibText, {
        gpu,
        cfg,
        src: source,
        runner,
        clusterUnit: (l) => readUnit(unitName(l)),
        shapes,
      });
      const t = performance.now();
      result.finetune = { settings: ft, blocks: reports, seconds: (t - t1) / 1000 };
      result.seconds.finetune = (t - t1) / 1000;
      t1 = t;
    }

    if (opts.stage === "finetune") return result;
    runner.enter("export", gpu);
    const qc = planned.quantConfig();
    await writeCompressedModel(
      s.model,
      s.out,
      cfg,
      qc,
      async (l) => {
        const tensors = await readUnit(unitName(l));
        if (ft) {
          // Finetuned codebooks replace the clustered ones (same shape, stored flat in the unit).
          const tuned = await readUnit(finetuneUnit(l));
          for (const t of tensors) {
            const f = tuned.find((q) => q.name === t.name);
            if (f) t.data = f.data;
          }
        }
        return planned.blockTensors(tensors);
      },
      index,
      async (tmp) => {
        // The folder is complete but not yet in place: recover, evaluate, add the report.
        result.seconds.export = (performance.now() - t1) / 1000;
        await finishFolder(s, tmp, runner, result);
      },
    );
    progress.note("export", `wrote ${s.out}`);
  } finally {
    control.close();
    await work.close();
    index.close();
  }
  return result;
}

/** The block-wise finetune stage on windows sampled from the calibration text. */
async function finetuneBlocks(
  ft: NonNullable<CompressSettings["finetune"]>,
  calibText: (file: string) => Promise<{ ids: Int32Array }>,
  inp: Omit<FinetuneInput, "train" | "heldOut" | "settings">,
) {
  const { ids } = await calibText(ft.calib);
  const { train, heldOut } = sampleWindows(ids, {
    samples: ft.samples,
    seqlen: ft.seqlen,
    holdout: ft.holdout,
    seed: ft.train.seed,
  }, ft.calib);
  return await finetune({ ...inp, train, heldOut, settings: ft.train });
}

/**
 * The exported folder `tmp`, before it moves into place: whole-model distillation from the
 * original (--recover), which replaces its codebooks; its evaluation; its report.
 */
async function finishFolder(
  s: CompressSettings,
  tmp: string,
  runner: StageRunner,
  result: CompressResult,
): Promise<void> {
  const gpu = await getGpu();
  let t = performance.now();
  if (s.recover) {
    runner.enter("recover", gpu);
    const r = await trainCompressed({ ...s.recover, teacher: s.model }, tmp, runner);
    // tmp is not in place yet: its shards are patched where they lie, not copied.
    if (r.best.size > 0) await patchFolder(tmp, r.best);
    result.recover = { report: r.report, settings: r.settings, data: r.data };
    result.seconds.recover = (performance.now() - t) / 1000;
    t = performance.now();
  }
  runner.enter("eval", gpu);
  if (s.eval) {
    const e = { ...s.eval, gpuBudget: s.gpuBudget };
    const run = (model: string) => () => evaluatePerplexity({ model, ...e }, runner.progress);
    const [orig, comp] = (await runner.stage("eval", [
      evalUnit("eval/original", run(s.model)),
      evalUnit("eval/compressed", run(tmp)),
    ])).map((u) => u.info);
    comp.model = s.out;
    result.eval = { original: orig, compressed: comp };
    result.ppl_original = orig.ppl;
    result.ppl_compressed = comp.ppl;
    result.seconds.eval = (performance.now() - t) / 1000;
  }
  runner.enter(null);
  result.gpu_peak = runner.gpuPeak;
  result.host_peak = runner.hostPeak;
  result.gpu_peak_bytes = Math.max(...Object.values(result.gpu_peak));
  await writeReport(tmp, result);
}

/** What an evaluation unit holds (checked when read back; a mismatch evaluates again). */
const EvalUnit = z.object({
  model: z.string(),
  text: z.string(),
  ppl: z.number(),
  nll: z.number(),
  tokens: z.number(),
  windows: z.number(),
  seqlen: z.number(),
  seconds: z.number(),
  tokens_per_s: z.number(),
  gpu_peak_bytes: z.number(),
  adapter: z.string(),
}) satisfies z.ZodType<EvalFacts>;
type EvalFacts = Omit<EvalResult, "firstLogits">;

/** An evaluation kept as a work unit (its result in the record), so a resume does not repeat it. */
function evalUnit(unit: string, run: () => Promise<EvalResult>): Unit<EvalFacts> {
  return {
    name: unit,
    file: `${unit}.json`,
    info: EvalUnit,
    run: async () => {
      const { firstLogits: _, ...r } = await run();
      return { data: new TextEncoder().encode(JSON.stringify(r)), info: r };
    },
  };
}
