// The compress pipeline: load, cluster (or RTN) per block into the work directory, export the
// compressed folder, and optionally evaluate original and compressed perplexity.
import { existsSync } from "node:fs";
import { dirname, join, relative } from "node:path";
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
import { sha256, sha256Files } from "../io/hash.ts";
import type { Progress } from "../util/progress.ts";
import { RunControl } from "./control.ts";
import { originalBitsPerWeight, writeReport } from "./report.ts";
import type { CompressResult, CompressSettings } from "./result.ts";
import { WorkDir } from "../io/workdir.ts";

export type { CompressResult, CompressSettings } from "./result.ts";

/** What the inputs are: the SHA-256 of each input file, and one hash over all of them. */
export interface InputHashes {
  /** File name (relative to the model folder) -> SHA-256 of the whole file. */
  files: Record<string, string>;
  hash: string;
}

/**
 * Hashes the inputs (config, tokenizer and every safetensors file, whole files). With `work`,
 * file hashes are cached in `work/input-hashes.json` by path, size and modification time, so a
 * rerun reads a large model only when a file's size or mtime changed.
 */
export async function inputsHash(
  dir: string,
  files: string[],
  work?: string,
): Promise<InputHashes> {
  const list = ["config.json", "tokenizer.json"].map((name) => ({ name, path: join(dir, name) }))
    .concat(files.map((path) => ({ name: relative(dir, path), path })));
  let cache: string | undefined;
  if (work) {
    try {
      await Deno.mkdir(work, { recursive: true });
      cache = join(work, "input-hashes.json");
    } catch {
      // no cache: WorkDir.open reports an unusable work directory
    }
  }
  const hashes = await sha256Files(list, cache);
  const lines = Object.keys(hashes).sort().map((n) => `${n} ${hashes[n]}`);
  return { files: hashes, hash: await sha256(lines.join("\n")) };
}

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
  await checkWritable(s.out);
  const m = await openModel(s.model);
  const tokenizer = await Tokenizer.load(s.model);
  const { cfg, source, index } = m;
  const inputs = await inputsHash(s.model, index.files, s.work);
  const planned = await method.plan(cfg, source, s, inputs.hash);
  const { bits, matrices: plan, quantizeBlock } = planned;
  progress.note("plan", planned.note);
  const ft = method.finetunable ? s.finetune : undefined;
  const stage = method.stage;
  // Settings per stage, in order: a change invalidates that stage and every later one. The host
  // cap changes where activations live, not results, so a resume may change it.
  const { hostBudget: _, ...recordedTrain } = ft?.train ?? {};
  const stages: Record<string, unknown> = {
    [stage]: planned.settings,
    finetune: ft ? { ...ft, train: recordedTrain } : null,
    eval: s.eval ? { ...s.eval, codebookDtype: s.cluster.codebookDtype } : null,
  };
  const work = await WorkDir.open(s.work, stages, inputs.files, s.restart);
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
  };
  try {
    const gpu = await getGpu();
    // Peak bytes per stage: the counter restarts from what is live when a stage begins.
    let stageName = stage;
    gpu.bytesPeak = gpu.bytesLive;
    const endStage = (next: string) => {
      result.gpu_peak[stageName] = Math.max(result.gpu_peak[stageName] ?? 0, gpu.bytesPeak);
      stageName = next;
      gpu.bytesPeak = gpu.bytesLive;
    };
    const unitName = (l: number) => `${stage}/block-${String(l).padStart(3, "0")}`;
    const readUnit = async (unit: string) =>
      decodeSafetensors(await work.read(unit), work.path(`${unit}.safetensors`));
    for (let l = 0; l < cfg.layers; l++) {
      const unit = unitName(l);
      const done = await work.done(unit, BlockInfo);
      if (done) {
        result.blocks.push({ layer: l, facts: done.info.facts, resumed: true });
        progress.update({ stage, done: l + 1, total: cfg.layers, block: l, resumed: "yes" });
        continue;
      }
      control.checkpoint();
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
      await work.complete(unit, `${unit}.safetensors`, encodeSafetensors(r.tensors), {
        facts: r.facts,
      });
      result.blocks.push({ layer: l, facts: r.facts, resumed: false });
      progress.update({ stage, done: l + 1, total: cfg.layers, block: l });
    }
    let t1 = performance.now();
    result.seconds.cluster = (t1 - t0) / 1000;

    endStage("finetune");
    if (ft) {
      const ids = tokenizer.encode(await readText(ft.calib));
      const { train, heldOut } = sampleWindows(ids, {
        samples: ft.samples,
        seqlen: ft.seqlen,
        holdout: ft.holdout,
        seed: ft.train.seed,
      }, ft.calib);
      const shapes = Object.fromEntries(
        plan!.map((p) => [p.kind, { n: p.n, d: p.d, splits: p.splits }]),
      ) as FinetuneInput["shapes"];
      const reports = await finetune({
        gpu,
        cfg,
        src: source,
        work,
        clusterUnit: (l) => readUnit(unitName(l)),
        shapes,
        train,
        heldOut,
        settings: ft.train,
        progress,
        checkpoint: () => control.checkpoint(),
      });
      const t = performance.now();
      result.finetune = { settings: ft, blocks: reports, seconds: (t - t1) / 1000 };
      result.seconds.finetune = (t - t1) / 1000;
      t1 = t;
    }

    endStage("export");
    const qc = planned.quantConfig();
    let tExport = 0;
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
        // The folder is complete but not yet in place: evaluate it, then add the report.
        tExport = performance.now();
        result.seconds.export = (tExport - t1) / 1000;
        endStage("eval");
        if (s.eval) {
          const e = { ...s.eval, gpuBudget: s.gpuBudget };
          const orig = await evalUnit(
            work,
            "eval/original",
            control,
            () => evaluatePerplexity({ model: s.model, ...e }, progress),
          );
          const comp = await evalUnit(
            work,
            "eval/compressed",
            control,
            () => evaluatePerplexity({ model: tmp, ...e }, progress),
          );
          comp.model = s.out;
          result.eval = { original: orig, compressed: comp };
          result.ppl_original = orig.ppl;
          result.ppl_compressed = comp.ppl;
          result.seconds.eval = (performance.now() - tExport) / 1000;
        }
        endStage("");
        delete result.gpu_peak[""];
        result.gpu_peak_bytes = Math.max(...Object.values(result.gpu_peak));
        await writeReport(tmp, result);
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
}) satisfies z.ZodType<Omit<EvalResult, "firstLogits">>;

/** An evaluation kept as a work unit, so a resumed run does not repeat it. */
async function evalUnit(
  work: WorkDir,
  unit: string,
  control: RunControl,
  run: () => Promise<EvalResult>,
): Promise<Omit<EvalResult, "firstLogits">> {
  const done = await work.load(unit);
  if (done) {
    try {
      const kept = EvalUnit.safeParse(JSON.parse(new TextDecoder().decode(done.data)));
      if (kept.success) return kept.data;
    } catch {
      // not JSON: evaluate again
    }
  }
  control.checkpoint();
  const { firstLogits: _, ...r } = await run();
  await work.complete(unit, `${unit}.json`, new TextEncoder().encode(JSON.stringify(r)));
  return r;
}

/** Fails early, before any work, when the output's parent folder cannot be written. */
async function checkWritable(out: string): Promise<void> {
  const parent = dirname(out);
  try {
    await Deno.mkdir(parent, { recursive: true });
    const probe = join(parent, `.cluscomp-probe-${Deno.pid}`);
    await Deno.writeTextFile(probe, "");
    await Deno.remove(probe);
  } catch (e) {
    throw new UserError(`Cannot write ${out}: ${(e as Error).message.split("\n")[0]}`);
  }
}
