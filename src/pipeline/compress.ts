// The compress pipeline: load, cluster (or RTN) per block into the work directory, export the
// compressed folder, and optionally evaluate original and compressed perplexity.
import { existsSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { kmeans } from "../cluster/kmeans.ts";
import {
  formatPlan,
  matrixBits,
  type MatrixPlan,
  overallBits,
  planMatrices,
} from "../cluster/plan.ts";
import { rtnBits } from "../cluster/rtn.ts";
import { vectorizeT } from "../cluster/vectorize.ts";
import {
  clusterBlock,
  type MatrixFacts,
  matrixSeed,
  rtnBlock,
  storedCodebook,
} from "../cluster/stage.ts";
import { UserError } from "../errors.ts";
import { type EvalResult, evaluatePerplexity } from "../eval/perplexity.ts";
import {
  type ClusterModule,
  CODES_PACKING,
  packedCodesTensor,
  type QuantizationConfig,
  writeCompressedModel,
} from "../format/compressed.ts";
import { codeBits } from "../io/pack.ts";
import { getGpu } from "../gpu/device.ts";
import { LINEAR_KINDS, linearNames, type ModelConfig } from "../io/config.ts";
import { decodeSafetensors, encodeSafetensors } from "../io/safetensors.ts";
import { readText } from "../io/text.ts";
import { Tokenizer } from "../io/tokenizer.ts";
import { sampleWindows } from "../finetune/calib.ts";
import { finetune, type FinetuneInput, finetuneUnit } from "../finetune/stage.ts";
import { openModel } from "../format/open.ts";
import type { WeightSource } from "../model/weights.ts";
import { Rng } from "../util/rng.ts";
import { z } from "zod";
import { writeFileAtomic } from "../io/atomic.ts";
import { sha256, sha256Files } from "../io/hash.ts";
import type { Progress } from "../util/progress.ts";
import { RunControl } from "./control.ts";
import { writeReport } from "./report.ts";
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

/** Quick k-means on a sample of one layer's matrix, for ranking (d, n) pairs. */
function sampleErrorFn(cfg: ModelConfig, src: WeightSource, seed: number) {
  const cache = new Map<string, Float32Array>();
  const layer = Math.floor(cfg.layers / 2);
  return async (kind: MatrixPlan["kind"], d: number, n: number): Promise<number> => {
    const gpu = await getGpu();
    const lin = linearNames(layer, cfg).find((l) => l.kind === kind)!;
    let wT = cache.get(kind);
    if (!wT) {
      wT = await src.linearT(layer, kind);
      cache.set(kind, wT);
    }
    const { x, N } = vectorizeT(wT, lin.in, lin.out, d);
    // A sample of up to 65,536 vectors, and n scaled down with it.
    const S = Math.min(N, 65536);
    let sample = x;
    if (S < N) {
      const rng = new Rng(matrixSeed(seed, layer, kind) ^ d);
      sample = new Float32Array(S * d);
      for (let i = 0; i < S; i++) {
        const j = rng.int(N);
        sample.set(x.subarray(j * d, j * d + d), i * d);
      }
    }
    const nn = Math.max(2, Math.min(n, Math.floor(S * n / N), S));
    const r = await kmeans(gpu, sample, S, d, nn, { iters: 5, seed });
    return r.objective / (S * d);
  };
}

export async function compress(
  s: CompressSettings,
  progress: Progress,
  control: RunControl = new RunControl(null),
): Promise<CompressResult> {
  const t0 = performance.now();
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
  let plan: MatrixPlan[] | undefined, cached: MatrixPlan[] | undefined;
  let bits: { total: number; stored: number };
  if (s.method === "cluscomp") {
    cached = await cachedPlan(
      s,
      inputs.hash,
      () => planMatrices(cfg, s.cluster, sampleErrorFn(cfg, source, s.cluster.seed)),
    );
    // Stored bits as this version writes them (packed codes), also for a plan cached by an
    // older version; the stage settings keep the cached plan so its work directory resumes.
    plan = cached.map((p) => ({
      ...p,
      storedBits: matrixBits(p.out, p.in, p.d, p.n, p.splits).storedBits,
    }));
    bits = overallBits(plan);
    progress.note(
      "plan",
      `\n${formatPlan(plan)}\noverall ${bits.total.toFixed(4)} bits per weight`,
    );
  } else {
    let sum = 0, weights = 0;
    for (const lin of linearNames(0, cfg)) {
      sum += rtnBits(s.rtn.bits, s.rtn.group, lin.in) * lin.in * lin.out;
      weights += lin.in * lin.out;
    }
    bits = { total: sum / weights, stored: sum / weights };
    progress.note(
      "plan",
      `RTN ${s.rtn.bits} bits, group ${s.rtn.group}: ${bits.total.toFixed(4)} bits per weight`,
    );
  }
  const ft = s.method === "cluscomp" ? s.finetune : undefined;
  const stage = s.method === "cluscomp" ? "cluster" : "rtn";
  // Settings per stage, in order: a change invalidates that stage and every later one.
  const stages: Record<string, unknown> = {
    [stage]: s.method === "cluscomp"
      ? {
        plan: cached!.map(({ reason: _, ...p }) => p),
        iters: s.cluster.iters,
        seed: s.cluster.seed,
        init: s.cluster.init,
        restarts: s.cluster.restarts,
      }
      : s.rtn,
    finetune: ft ?? null,
    eval: s.eval ? { ...s.eval, codebookDtype: s.cluster.codebookDtype } : null,
  };
  const work = await WorkDir.open(s.work, stages, inputs.files, s.restart);
  const result: CompressResult = {
    method: s.method,
    model: s.model,
    out: s.out,
    bits_per_weight: bits.total,
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
      const r = s.method === "cluscomp"
        ? await clusterBlock(
          gpu,
          cfg,
          source,
          l,
          plan!,
          s.cluster,
          (kind, iter, objective) =>
            progress.update({
              stage,
              done: l,
              total: cfg.layers,
              block: l,
              matrix: kind,
              iter,
              objective,
            }),
        )
        : await rtnBlock(cfg, source, l, s.rtn.bits, s.rtn.group);
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
    const qc = quantConfig(cfg, s, plan, bits);
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
        // Codes leave the unit as U8 / U16 and are written packed at their bit width.
        return tensors.map((t) =>
          t.name.endsWith(".codes")
            ? packedCodesTensor(t, (qc.modules[t.name.slice(0, -6)] as ClusterModule).n)
            : storedCodebook(t, s.cluster.codebookDtype)
        );
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

/** A cached plan as read back from disk (checked; a mismatch plans again). */
const PlanFile = z.array(
  z.object({
    kind: z.enum(LINEAR_KINDS as unknown as [string, ...string[]]),
    out: z.number().int().positive(),
    in: z.number().int().positive(),
    d: z.number().int().positive(),
    n: z.number().int().positive(),
    splits: z.number().int().positive(),
    pad: z.number().int().nonnegative(),
    vectors: z.number().int().positive(),
    codeBits: z.number(),
    codebookBits: z.number(),
    totalBits: z.number(),
    storedBits: z.number(),
    reason: z.string(),
  }),
).nonempty();

/**
 * The (d, n) plan, kept beside the work directory's units so a resumed run does not repeat the
 * sample k-means of a --bits search. Keyed by the cluster settings and the inputs; deterministic.
 */
async function cachedPlan(
  s: CompressSettings,
  inputs: string,
  make: () => Promise<MatrixPlan[]>,
): Promise<MatrixPlan[]> {
  const key = await sha256(JSON.stringify([s.cluster, inputs]));
  const path = join(s.work, "plans", `${key.slice(0, 32)}.json`);
  if (existsSync(path)) {
    try {
      const kept = PlanFile.safeParse(JSON.parse(await Deno.readTextFile(path)));
      if (kept.success) return kept.data as MatrixPlan[];
    } catch {
      // unreadable: plan again
    }
    // A plan file that is unreadable or not a plan (hand-edited, truncated): plan again.
  }
  const plan = await make();
  await Deno.mkdir(dirname(path), { recursive: true });
  await writeFileAtomic(path, new TextEncoder().encode(JSON.stringify(plan)));
  return plan;
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

function quantConfig(
  cfg: ModelConfig,
  s: CompressSettings,
  plan: MatrixPlan[] | undefined,
  bits: { total: number; stored: number },
): QuantizationConfig {
  const modules: QuantizationConfig["modules"] = {};
  for (let l = 0; l < cfg.layers; l++) {
    for (const lin of linearNames(l, cfg)) {
      const name = lin.name.replace(/\.weight$/, "");
      if (s.method === "rtn") {
        modules[name] = { bits: s.rtn.bits, group: s.rtn.group };
        continue;
      }
      const p = plan!.find((q) => q.kind === lin.kind)!;
      modules[name] = {
        d: p.d,
        n: p.n,
        pad: p.pad,
        splits: p.splits,
        codebook_dtype: s.cluster.codebookDtype,
        codes_dtype: "packed",
        code_bits: codeBits(p.n),
      };
    }
  }
  return {
    quant_method: s.method,
    bits_per_weight: bits.total,
    stored_bits_per_weight: bits.stored,
    ...(s.method === "cluscomp" ? { codes_packing: CODES_PACKING } : {}),
    modules,
  };
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
