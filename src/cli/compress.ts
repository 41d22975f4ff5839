// `cluscomp compress`: load, cluster (or RTN), export, and optionally evaluate.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { ClusterSettings, MatrixSettings } from "../cluster/plan.ts";
import { UserError } from "../errors.ts";
import { defaultCalib, defaultLr } from "../finetune/calib.ts";
import { DEFAULT_FINETUNE_BATCH } from "../finetune/stage.ts";
import { LINEAR_KINDS, type LinearKind, loadConfig } from "../io/config.ts";
import { compress, type CompressSettings } from "../pipeline/compress.ts";
import { RunControl } from "../runner/control.ts";
import { Progress } from "../util/progress.ts";
import { bitsText } from "../pipeline/report.ts";
import { checkStage, resolveShard, type StageOptions } from "../pipeline/shard.ts";
import { methods } from "../method/mod.ts";
import { bytesFlag, durationFlag, intFlag, numberFlag, parseFlags } from "./args.ts";

export const COMPRESS_HELP =
  `cluscomp compress: ClusComp (or RTN) compression of a Llama-family model

Usage: deno task compress [--model DIR --out DIR] (--bits B | --d D --n N) [options]

With no arguments: compresses the embedded default model (fixtures/kjv-llama, trained on the
King James Bible) to about 2 bits per weight with finetuning on its calib.txt, and prints the
perplexity of the original and compressed model on its held-out text (seqlen 128).

  --model DIR            Hugging Face Llama-family folder
  --out DIR              compressed folder to write (written whole at the end, atomically)
  --work DIR             work directory with per-block checkpoints (default OUT.work)
  --method M             cluscomp (default), rtn, or gptq (GPTQ: RTN's format, codes found with
                         error compensation through each linear's calibration Hessian; needs
                         --calib)
  --bits B               target bits per weight, codebook included (picks n, and d if not given);
                         with --method rtn or gptq: the integer bit width
  --d D, --n N           vector length and codebook size
  --override K:d=D,n=N   per-matrix setting, K in q,k,v,o,gate,up,down (repeatable)
  --splits S             codebooks per matrix (default 1)
  --codebook-dtype T     f16 (default) or bf16
  --iters I              k-means iterations (default 20)
  --init I               random (default) or kmeans++
  --restarts R           k-means runs per matrix from R seeds; the lowest objective is kept
                         (default 1)
  --weighting W          none (default) or activations: the k-means weighs each row of W^T by
                         the second moment of its input feature over the calibration windows
                         (a stats stage before clustering; needs --calib, the finetune windows)
  --group G              RTN / GPTQ group size (default 128)
  --act-order            GPTQ: quantize columns in descending Hessian diagonal (static groups)
  --damp D               GPTQ: add D * mean(diag H) to H's diagonal (default 0.01)
  --seed S               seed (default 0)
  --no-finetune          skip the block-wise codebook finetuning
  --calib FILE           calibration text for finetuning (required unless --no-finetune)
  --calib-samples S      calibration windows (default 128; 64 for small models)
  --calib-seqlen L       tokens per window (default 2048; 128 for small models)
  --holdout F            share of windows held out to pick the best epoch (default 0.1)
  --epochs E             epochs per block (default 20; stops early, see --patience)
  --patience P           epochs without held-out improvement before stopping (default 2)
  --lr LR                AdamW learning rate (default 5e-3 scaled by calibration tokens / 262,144)
  --weight-decay W       AdamW weight decay (default 0.1)
  --extra-term           also fit the full-precision block applied to the student's input
  --finetune-batch B     calibration windows per finetuning step, run side by side as one
                         dispatch sequence; the step's loss is their mean and the default --lr
                         grows by sqrt(B) (default 1)
  --host-memory SIZE     cap on host memory for the calibration activations (e.g. 8GB); over it
                         they stream through files in the work directory, with the same result
  --recover              after finetuning, distil the whole compressed model from the original
                         on the calibration text: the loss is half the cross-entropy against
                         the original's top-64 next-token distribution, half against the text
                         (the best mix measured on kjv-llama); see "deno task finetune --help"
  --recover-steps S      recovery steps (default 1 epoch over the calibration windows)
  --recover-lr LR        recovery peak learning rate (default 3e-3)
  --recover-batch B      windows per recovery step (default 4)
  --recover-seqlen L     tokens per recovery window (default: --calib-seqlen)
  --recover-data N       train on N tokens the original model writes itself instead of the
                         calibration text (ClusComp's 1-bit recovery)
  --eval-text FILE       evaluate original and compressed perplexity on FILE
  --eval-seqlen N        window length (default 2048)
  --eval-max-windows K   first K windows only
  --gpu-memory SIZE      GPU memory budget for evaluation (default 2GiB)
  --restart STAGE        recompute from STAGE on (cluster|rtn|gptq, finetune, eval), e.g. after
                         changing its settings
  --time-budget T        stop at the next unit boundary before T (e.g. 30m, 2h) is exceeded
                         and exit 75: run the same command again to continue
  --stage STAGE          stop after STAGE: cluster (rtn with --method rtn) or finetune; the
                         work directory keeps its units for the run that finishes
  --shard I/N            with --stage cluster: cluster only shard I of N (0-based) of the
                         blocks, split by estimated work; shards run at once on one shared
                         --work, then a run without --stage adopts their units and goes on
  --shards N             the shard count when the index comes from the scheduler:
                         JOB_COMPLETION_INDEX (Kubernetes Indexed Job); under Slurm
                         (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT) it is optional
  --json                 print one JSON object on stdout
  --quiet                no progress on stderr
  -h, --help             this text

A killed run resumes: run the same command again and finished blocks are not recomputed.
Exit codes: 0 done; 1 bad input or settings; 3 internal error; 75 not finished (time budget):
run again; 130 stopped by SIGINT/SIGTERM (finished units kept).
`;

/** The embedded default model (and its calibration and held-out texts). */
function defaultModel(): string {
  return fileURLToPath(new URL("../../fixtures/kjv-llama", import.meta.url));
}

function parseOverride(v: string): [LinearKind, MatrixSettings] {
  const m = /^(\w+):(.+)$/.exec(v);
  const bad = () => new UserError(`compress: --override "${v}" must look like k:d=4,n=4096`);
  if (!m) throw bad();
  const kind = m[1] as LinearKind;
  if (!LINEAR_KINDS.includes(kind)) {
    throw new UserError(
      `compress: --override names unknown matrix "${m[1]}" (use ${LINEAR_KINDS.join(", ")})`,
    );
  }
  const out: MatrixSettings = {};
  for (const part of m[2].split(",")) {
    const [k, val] = part.split("=");
    if (k !== "d" && k !== "n") throw bad();
    out[k] = intFlag("compress", val, `override ${kind}.${k}`, k === "d" ? 1 : 2);
  }
  return [kind, out];
}

export async function compressMain(argv: string[]): Promise<number> {
  const cmd = "compress";
  const { values } = parseFlags(cmd, argv, {
    model: { type: "string" },
    out: { type: "string" },
    work: { type: "string" },
    method: { type: "string" },
    bits: { type: "string" },
    d: { type: "string" },
    n: { type: "string" },
    override: { type: "string", multiple: true },
    splits: { type: "string" },
    "codebook-dtype": { type: "string" },
    iters: { type: "string" },
    init: { type: "string" },
    restarts: { type: "string" },
    weighting: { type: "string" },
    group: { type: "string" },
    "act-order": { type: "boolean" },
    damp: { type: "string" },
    seed: { type: "string" },
    "eval-text": { type: "string" },
    "eval-seqlen": { type: "string" },
    "eval-max-windows": { type: "string" },
    "gpu-memory": { type: "string" },
    restart: { type: "string" },
    "time-budget": { type: "string" },
    stage: { type: "string" },
    shard: { type: "string" },
    shards: { type: "string" },
    "no-finetune": { type: "boolean" },
    calib: { type: "string" },
    "calib-samples": { type: "string" },
    "calib-seqlen": { type: "string" },
    holdout: { type: "string" },
    epochs: { type: "string" },
    patience: { type: "string" },
    lr: { type: "string" },
    "weight-decay": { type: "string" },
    "extra-term": { type: "boolean" },
    "finetune-batch": { type: "string" },
    "host-memory": { type: "string" },
    recover: { type: "boolean" },
    "recover-steps": { type: "string" },
    "recover-lr": { type: "string" },
    "recover-batch": { type: "string" },
    "recover-seqlen": { type: "string" },
    "recover-data": { type: "string" },
    json: { type: "boolean" },
    quiet: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(COMPRESS_HELP);
    return 0;
  }
  const progress = new Progress(Boolean(values.quiet));
  const noArgs = argv.filter((a) => a !== "--quiet" && a !== "--json").length === 0;
  let model = values.model as string | undefined;
  let out = values.out as string | undefined;
  let bitsArg = values.bits;
  let evalText = values["eval-text"] as string | undefined;
  let evalSeqlen = values["eval-seqlen"];
  const evalMax = values["eval-max-windows"];
  let calib = values.calib as string | undefined;
  if (noArgs) {
    model = defaultModel();
    if (!existsSync(`${model}/model.safetensors`)) {
      throw new UserError(`compress: the embedded default model ${model} is missing`);
    }
    out = "out/kjv-llama-2bit";
    bitsArg = "2";
    calib = `${model}/calib.txt`;
    evalText = `${model}/heldout.txt`;
    evalSeqlen = "128";
    progress.note(
      "compress",
      `no arguments: compressing the embedded model ${model} to about 2 bits`,
    );
  }
  if (!model) throw new UserError(`${cmd}: --model is required`);
  if (!out) throw new UserError(`${cmd}: --out is required`);
  const method = (values.method ?? "cluscomp") as string;
  if (method !== "cluscomp" && method !== "rtn" && method !== "gptq") {
    throw new UserError(`${cmd}: --method must be cluscomp, rtn or gptq (got "${method}")`);
  }
  if (method !== "gptq" && (values["act-order"] || values.damp !== undefined)) {
    const flag = values["act-order"] ? "--act-order" : "--damp";
    throw new UserError(`${cmd}: ${flag} is for --method gptq`);
  }
  const dtype = (values["codebook-dtype"] ?? "f16") as string;
  if (dtype !== "f16" && dtype !== "bf16") {
    throw new UserError(`${cmd}: --codebook-dtype must be f16 or bf16 (got "${dtype}")`);
  }
  const init = (values.init ?? "random") as string;
  if (init !== "random" && init !== "kmeans++") {
    throw new UserError(`${cmd}: --init must be random or kmeans++ (got "${init}")`);
  }
  const overrides: ClusterSettings["overrides"] = {};
  for (const o of (values.override as unknown as string[] | undefined) ?? []) {
    const [k, v] = parseOverride(o);
    overrides[k] = { ...overrides[k], ...v };
  }
  const bits = bitsArg === undefined
    ? undefined
    : numberFlag(cmd, bitsArg, "bits", { exclusiveMin: 0 });
  const cluster: ClusterSettings = {
    bits,
    d: values.d === undefined ? undefined : intFlag(cmd, values.d, "d", 1),
    n: values.n === undefined ? undefined : intFlag(cmd, values.n, "n", 2),
    overrides,
    splits: intFlag(cmd, values.splits, "splits", 1, 1),
    codebookDtype: dtype,
    iters: intFlag(cmd, values.iters, "iters", 1, 20),
    seed: intFlag(cmd, values.seed, "seed", 0, 0),
    init,
    restarts: intFlag(cmd, values.restarts, "restarts", 1, 1),
  };
  const weighting = (values.weighting ?? "none") as string;
  if (weighting !== "none" && weighting !== "activations") {
    throw new UserError(`${cmd}: --weighting must be none or activations (got "${weighting}")`);
  }
  if (weighting === "activations") {
    if (method !== "cluscomp") {
      throw new UserError(`${cmd}: --weighting activations is for --method cluscomp`);
    }
    cluster.weighting = "activations";
    // The embedded model brings its calibration text.
    if (!calib && model === defaultModel()) calib = `${model}/calib.txt`;
  }
  if ((method === "rtn" || method === "gptq") && bits === undefined) {
    throw new UserError(`${cmd}: --method ${method} needs --bits`);
  }
  // The embedded model brings its calibration text (GPTQ's Hessians).
  if (method === "gptq" && !calib && model === defaultModel()) calib = `${model}/calib.txt`;
  const settings: CompressSettings = {
    model,
    out,
    work: (values.work as string | undefined) ?? `${out}.work`,
    method,
    cluster,
    rtn: { bits: bits ?? 4, group: intFlag(cmd, values.group, "group", 1, 128) },
    eval: evalText
      ? {
        text: evalText,
        seqlen: intFlag(cmd, evalSeqlen, "eval-seqlen", 2, 2048),
        maxWindows: evalMax === undefined
          ? undefined
          : intFlag(cmd, evalMax, "eval-max-windows", 1),
      }
      : undefined,
    gpuBudget: bytesFlag(cmd, values["gpu-memory"], "gpu-memory", 2 ** 31),
    restart: values.restart as string | undefined,
  };
  const budgetMs = durationFlag(cmd, values["time-budget"], "time-budget");
  if ((method === "rtn" || method === "gptq") && (!Number.isInteger(bits) || bits! > 8)) {
    throw new UserError(
      `${cmd}: --method ${method} needs an integer --bits from 1 to 8 (got ${bits})`,
    );
  }
  if (method === "gptq") {
    settings.gptq = {
      bits: bits!,
      group: settings.rtn.group,
      actOrder: Boolean(values["act-order"]),
      damp: numberFlag(cmd, values.damp, "damp", { min: 0, def: 0.01 }),
    };
  }
  // --stage cluster: the finetune and recover settings belong to the run that finishes.
  const blockOnly = values.stage === methods[method].stage;
  if (method === "cluscomp" && !values["no-finetune"] && !blockOnly) {
    if (!calib) throw new UserError(`${cmd}: finetuning needs --calib FILE (or --no-finetune)`);
    const cfg = await loadConfig(model);
    const def = defaultCalib(cfg);
    const samples = intFlag(cmd, values["calib-samples"], "calib-samples", 1, def.samples);
    const seqlen = intFlag(cmd, values["calib-seqlen"], "calib-seqlen", 2, def.seqlen);
    const batch = intFlag(
      cmd,
      values["finetune-batch"],
      "finetune-batch",
      1,
      Math.min(DEFAULT_FINETUNE_BATCH, samples),
    );
    if (batch > samples) {
      throw new UserError(
        `${cmd}: --finetune-batch ${batch} exceeds the ${samples} calibration windows ` +
          `(--calib-samples)`,
      );
    }
    if (values["calib-samples"] === undefined || values["calib-seqlen"] === undefined) {
      progress.note("finetune", def.note);
    }
    const lr = numberFlag(cmd, values.lr, "lr", {
      exclusiveMin: 0,
      // sqrt(B) for B windows per step (measured on tinyllama: B 4 at 2x beat B 4 at 1x).
      def: defaultLr(samples, seqlen) * Math.sqrt(batch),
    });
    if (values.lr === undefined) {
      progress.note(
        "finetune",
        `lr ${lr.toExponential(2)} (5e-3 scaled by ${
          samples * seqlen
        } / 262,144 calibration tokens${
          batch > 1 ? `, times sqrt(${batch} windows per step)` : ""
        })`,
      );
    }
    settings.finetune = {
      calib,
      samples,
      seqlen,
      holdout: numberFlag(cmd, values.holdout, "holdout", { min: 0, def: 0.1 }),
      train: {
        epochs: intFlag(cmd, values.epochs, "epochs", 0, 20),
        lr,
        weightDecay: numberFlag(cmd, values["weight-decay"], "weight-decay", { min: 0, def: 0.1 }),
        patience: intFlag(cmd, values.patience, "patience", 1, 2),
        extraTerm: Boolean(values["extra-term"]),
        seed: cluster.seed,
        // Recorded only when above 1: one window per step leaves old work dirs valid.
        ...(batch > 1 ? { batch } : {}),
        // Only when given: an absent cap leaves the finetune settings (and old work dirs) as they were.
        ...(values["host-memory"] === undefined
          ? {}
          : { hostBudget: bytesFlag(cmd, values["host-memory"], "host-memory") }),
      },
    };
    if (settings.finetune.holdout >= 1) throw new UserError(`${cmd}: --holdout must be below 1`);
  }
  // The stats stage's windows without finetuning (with it, finetuning's are used).
  if (calib && !settings.finetune) {
    const def = defaultCalib(await loadConfig(model));
    settings.calib = {
      file: calib,
      samples: intFlag(cmd, values["calib-samples"], "calib-samples", 1, def.samples),
      seqlen: intFlag(cmd, values["calib-seqlen"], "calib-seqlen", 2, def.seqlen),
      holdout: numberFlag(cmd, values.holdout, "holdout", { min: 0, def: 0.1 }),
      seed: cluster.seed,
    };
    if (settings.calib.holdout >= 1) throw new UserError(`${cmd}: --holdout must be below 1`);
  }
  const recoverFlags = Object.keys(values).filter((k) => k.startsWith("recover-"));
  if (recoverFlags.length > 0 && !values.recover) {
    throw new UserError(`${cmd}: --${recoverFlags[0]} needs --recover`);
  }
  if (values.recover && !blockOnly) settings.recover = recoverSettings(values, settings);
  // Shards run the block stage only; only such a run reads the scheduler's array index.
  const blockStage = methods[method].stage;
  if (!blockOnly && (values.shard !== undefined || values.shards !== undefined)) {
    const flag = values.shard !== undefined ? "--shard" : "--shards";
    throw new UserError(
      `${cmd}: ${flag} shards the ${blockStage} stage: add --stage ${blockStage}`,
    );
  }
  const shard = blockOnly
    ? resolveShard(
      values.shard as string | undefined,
      values.shards as string | undefined,
      Deno.env.toObject(),
    )
    : null;
  const opts: StageOptions = {
    stage: values.stage as string | undefined,
    ...(shard ? { shard } : {}),
  };
  checkStage(opts, blockStage, settings.finetune !== undefined);
  const r = await compress(settings, progress, new RunControl(budgetMs), opts);
  if (opts.stage !== undefined) {
    if (values.json) console.log(JSON.stringify(r));
    else {
      const resumed = r.blocks.filter((b) => b.resumed).length;
      const which = opts.shard ? ` shard ${opts.shard.index}/${opts.shard.count}` : "";
      console.log(
        `${opts.stage}${which}: ${r.blocks.length} blocks (${resumed} resumed) in ${settings.work}`,
      );
    }
    return 0;
  }
  if (values.json) {
    console.log(JSON.stringify(r));
  } else {
    console.log(`${r.method}: ${r.bits_per_weight.toFixed(4)} bits per weight -> ${r.out}`);
    if (r.eval) {
      const e = r.eval;
      console.log(
        `| model | bits/weight | ppl (${e.original.seqlen}, ${e.original.windows} windows) |`,
      );
      console.log(`| --- | --- | --- |`);
      const orig = bitsText(r.original_bits_per_weight);
      console.log(`| original | ${orig} | ${e.original.ppl.toFixed(4)} |`);
      const label = r.finetune ? `${r.method} + finetune` : r.method;
      console.log(
        `| ${label} | ${r.bits_per_weight.toFixed(3)} | ${e.compressed.ppl.toFixed(4)} |`,
      );
    }
  }
  return 0;
}

/** compress --recover: whole-model distillation settings from the --recover-* flags. */
function recoverSettings(
  values: Record<string, string | boolean | (string | boolean)[] | undefined>,
  settings: CompressSettings,
): NonNullable<CompressSettings["recover"]> {
  const cmd = "compress";
  if (!settings.finetune) {
    throw new UserError(`${cmd}: --recover needs finetuning (--calib FILE, no --no-finetune)`);
  }
  const ft = settings.finetune;
  const teacherData = values["recover-data"] === undefined
    ? undefined
    : intFlag(cmd, values["recover-data"], "recover-data", 1);
  return {
    data: teacherData === undefined ? ft.calib : undefined,
    format: "text",
    holdout: ft.holdout > 0 ? ft.holdout : 0.1,
    teacherData,
    topk: 64,
    temperature: 1,
    steps: values["recover-steps"] === undefined
      ? null
      : intFlag(cmd, values["recover-steps"], "recover-steps", 1),
    epochs: 1,
    train: {
      seqlen: intFlag(cmd, values["recover-seqlen"], "recover-seqlen", 2, ft.seqlen),
      batch: intFlag(cmd, values["recover-batch"], "recover-batch", 1, 4),
      lr: numberFlag(cmd, values["recover-lr"], "recover-lr", { exclusiveMin: 0, def: 3e-3 }),
      warmup: -1,
      schedule: "linear",
      weightDecay: 0,
      evalEvery: -1,
      trainNorms: false,
      trainHead: false,
      kdWeight: 0.5,
      seed: settings.cluster.seed,
    },
    gpuBudget: settings.gpuBudget,
  };
}
