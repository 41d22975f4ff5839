// `cluscomp plan`: the GPU, host and work-directory bytes each stage will need, and whether it
// fits.
import { UserError } from "../errors.ts";
import { loadConfigFile } from "../io/config.ts";
import { gib, planMemory } from "../pipeline/memplan.ts";
import {
  estimateSeconds,
  humanSeconds,
  parseThroughput,
  stageWork,
  type Throughput,
} from "../pipeline/timeplan.ts";
import { measureThroughput } from "../bench/timeplan.ts";
import { getGpu } from "../gpu/device.ts";
import { bytesFlag, intFlag, numberFlag, parseFlags } from "./args.ts";
import { shardPlan, unitList } from "../pipeline/shard.ts";

export const PLAN_HELP = `cluscomp plan: peak GPU and host memory and work-directory disk per stage
for a model config

Rows: cluster, finetune, eval (the compressed model: packed codes and f32 codebooks per block),
eval-original (compress --eval-text evaluates the original too), export, and generate (the
compressed model's weights, the KV cache for --context tokens, scratch for prefill passes of up
to 256 tokens, and one row of logits). The disk column is the work directory's peak: the cluster
units, and during finetuning every block's codebooks, one epoch checkpoint and two blocks'
calibration activations (the finished block's outputs and the next one's, while handing over).

Usage: deno task plan --config CONFIG.json --gpu-memory 48GB [options]

  --config FILE          a Hugging Face config.json (see fixtures/configs/)
  --gpu-memory SIZE      GPU memory available, e.g. 48GB
  --disk SIZE            disk free for the work directory; "fits" then covers disk too
  --host-memory SIZE     compress --host-memory: calibration activations streamed from disk over it
  --d D, --n N           codebook shape (default 8 and 65536: about 2 bits per weight)
  --splits S             codebooks per matrix (default 1)
  --calib-samples S      calibration windows (default 128)
  --calib-seqlen L       calibration window length (default 2048)
  --finetune-batch B     compress --finetune-batch: windows per finetuning step (default 1)
  --eval-seqlen N        evaluation window length (default 2048)
  --eval-tokens K        evaluation text length in tokens (default 341469, WikiText-2 test)
  --max-binding SIZE     the GPU's maxStorageBufferBindingSize (default 2GiB; llvmpipe: 128MiB)
  --context N            tokens of context for the generate row (default max_position_embeddings)
  --no-finetune          plan without the finetune stage
  --weighting W          none (default) or activations: plan the stats stage (the diagonals)
  --stats S              the stats stage's statistics: none, diag, or full (GPTQ's Gram matrices)
  --train-seqlen L       rows teacher and train (deno task finetune, compress --recover): window
                         length (default 512)
  --train-windows W      training windows the teacher's top-k is kept for (default 1000)
  --topk K               teacher probabilities kept per position (default 64)
  --train-batch B        windows per training step (default 8)
  --no-train             plan without the teacher and train rows
  --json                 one JSON object: {fits, stages: [{stage, gpu_bytes, host_bytes,
                         disk_bytes}]}

Time estimates (an "est. time" column; with --json, "seconds" and "work" per stage and the
"throughput" used): the work of each stage (k-means distance evaluations, matmul and codebook
FLOPs, bytes streamed per generated token; see src/pipeline/timeplan.ts) over rates measured
with the project's kernels. Finetuning counts every epoch (--patience may stop sooner); export
runs on the host and has no estimate.

  --measure              measure the rates on this machine's adapter first (a few seconds)
  --throughput FILE      use the rates of a previous --measure --json (e.g. from a real GPU)
  --iters I              k-means iterations (default 20)
  --restarts R           k-means runs per matrix (default 1)
  --epochs E             finetuning epochs per block (default 20)
  --holdout F            share of calibration windows held out (default 0.1)
  --extra-term           finetuning fits the extra term too (a second teacher pass)
  --new-tokens N         tokens generated for the generate row (default 256)

Sharding (compress --stage cluster --shard I/N):

  --shards N             the split of the cluster stage's blocks into N shards (by estimated
                         k-means work, as compress makes it) and each shard's share and, with
                         --measure or --throughput, estimated time
`;

export async function planMain(argv: string[]): Promise<number> {
  const cmd = "plan";
  const { values } = parseFlags(cmd, argv, {
    config: { type: "string" },
    "gpu-memory": { type: "string" },
    disk: { type: "string" },
    "host-memory": { type: "string" },
    d: { type: "string" },
    n: { type: "string" },
    splits: { type: "string" },
    "calib-samples": { type: "string" },
    "finetune-batch": { type: "string" },
    "calib-seqlen": { type: "string" },
    "eval-seqlen": { type: "string" },
    "eval-tokens": { type: "string" },
    "max-binding": { type: "string" },
    context: { type: "string" },
    "no-finetune": { type: "boolean" },
    weighting: { type: "string" },
    stats: { type: "string" },
    "no-train": { type: "boolean" },
    "train-seqlen": { type: "string" },
    "train-windows": { type: "string" },
    topk: { type: "string" },
    "train-batch": { type: "string" },
    "extra-term": { type: "boolean" },
    measure: { type: "boolean" },
    throughput: { type: "string" },
    iters: { type: "string" },
    restarts: { type: "string" },
    epochs: { type: "string" },
    holdout: { type: "string" },
    "new-tokens": { type: "string" },
    shards: { type: "string" },
    json: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(PLAN_HELP);
    return 0;
  }
  if (typeof values.config !== "string") throw new UserError(`${cmd}: --config is required`);
  const cfg = await loadConfigFile(values.config);
  const gpuMemory = bytesFlag(cmd, values["gpu-memory"], "gpu-memory");
  const disk = values.disk === undefined ? undefined : bytesFlag(cmd, values.disk, "disk");
  const shape = {
    d: intFlag(cmd, values.d, "d", 1, 8),
    n: intFlag(cmd, values.n, "n", 2, 65536),
    splits: intFlag(cmd, values.splits, "splits", 1, 1),
    calibSamples: intFlag(cmd, values["calib-samples"], "calib-samples", 1, 128),
    calibSeqlen: intFlag(cmd, values["calib-seqlen"], "calib-seqlen", 2, 2048),
    finetuneBatch: intFlag(cmd, values["finetune-batch"], "finetune-batch", 1, 1),
    evalSeqlen: intFlag(cmd, values["eval-seqlen"], "eval-seqlen", 2, 2048),
    evalTokens: intFlag(cmd, values["eval-tokens"], "eval-tokens", 2, 341469),
  };
  const timing = {
    iters: intFlag(cmd, values.iters, "iters", 1, 20),
    restarts: intFlag(cmd, values.restarts, "restarts", 1, 1),
    epochs: intFlag(cmd, values.epochs, "epochs", 0, 20),
    holdout: numberFlag(cmd, values.holdout, "holdout", { min: 0, def: 0.1 }),
    newTokens: intFlag(cmd, values["new-tokens"], "new-tokens", 1, 256),
  };
  if (timing.holdout >= 1) throw new UserError(`${cmd}: --holdout must be below 1`);
  if (values.measure && values.throughput !== undefined) {
    throw new UserError(`${cmd}: give --measure or --throughput, not both`);
  }
  // Read a --throughput file before any work, so a bad one fails at once.
  let throughput: Throughput | null = null;
  if (typeof values.throughput === "string") throughput = await readThroughput(values.throughput);
  const stages = planMemory(cfg, {
    ...shape,
    gpuMemory,
    disk,
    ...(values["host-memory"] === undefined
      ? {}
      : { hostMemory: bytesFlag(cmd, values["host-memory"], "host-memory") }),
    maxBinding: bytesFlag(cmd, values["max-binding"], "max-binding", 2 ** 31),
    finetune: !values["no-finetune"],
    extraTerm: Boolean(values["extra-term"]),
    context: intFlag(cmd, values.context, "context", 1, cfg.maxPositions),
    ...statsFlags(cmd, values.weighting, values.stats),
    train: values["no-train"] ? undefined : {
      seqlen: intFlag(cmd, values["train-seqlen"], "train-seqlen", 2, 512),
      windows: intFlag(cmd, values["train-windows"], "train-windows", 1, 1000),
      topk: intFlag(cmd, values.topk, "topk", 1, 64),
      batch: intFlag(cmd, values["train-batch"], "train-batch", 1, 8),
    },
  });
  const fits = stages.every((s) => s.fits);
  const trainRow = stages.some((s) => s.stage === "train")
    ? {
      seqlen: intFlag(cmd, values["train-seqlen"], "train-seqlen", 2, 512),
      windows: intFlag(cmd, values["train-windows"], "train-windows", 1, 1000),
    }
    : undefined;
  if (values.measure) {
    throughput = await measureThroughput(await getGpu(), { d: shape.d, n: shape.n });
  }
  const works = throughput
    ? stageWork(cfg, {
      ...shape,
      ...timing,
      finetune: !values["no-finetune"],
      extraTerm: Boolean(values["extra-term"]),
      train: trainRow,
    })
    : [];
  const shards = values.shards === undefined ? undefined : shardPlan(
    cfg,
    shape,
    timing,
    intFlag(cmd, values.shards, "shards", 1),
    throughput,
  );
  const timed = (stage: string) => {
    const work = works.find((w) => w.stage === stage);
    return work && throughput ? { work, seconds: estimateSeconds(work, throughput) } : null;
  };
  if (values.json) {
    const rows = throughput
      ? stages.map((s) => {
        const t = timed(s.stage);
        return { ...s, seconds: t?.seconds ?? null, work: t?.work ?? null };
      })
      : stages;
    console.log(JSON.stringify({
      fits,
      gpu_memory: gpuMemory,
      disk: disk ?? null,
      stages: rows,
      ...(throughput ? { throughput } : {}),
      ...(shards ? { shards } : {}),
    }));
    return 0;
  }
  const within = gib(gpuMemory) + (disk === undefined ? "" : `, ${gib(disk)} disk`);
  const est = throughput ? " est. time |" : "";
  console.log(`| stage | GPU peak | host peak | disk peak | fits ${within} |${est} note |`);
  console.log(`| --- | --- | --- | --- | --- |${throughput ? " --- |" : ""} --- |`);
  for (const s of stages) {
    const t = timed(s.stage);
    const cell = throughput ? ` ${t ? humanSeconds(t.seconds) : "-"} |` : "";
    console.log(
      `| ${s.stage} | ${gib(s.gpu_bytes)} | ${gib(s.host_bytes)} | ${gib(s.disk_bytes)} | ${
        s.fits ? "yes" : "no"
      } |${cell} ${s.note} |`,
    );
  }
  if (throughput) {
    const g = (v: number) => (v / 1e9).toPrecision(3);
    console.log(
      `rates (${throughput.adapter}): matmul ${g(throughput.matmul_flops_per_s)} GFLOP/s, ` +
        `codebook ${g(throughput.codebook_flops_per_s)} GFLOP/s, k-means ` +
        `${g(throughput.kmeans_evals_per_s)} G evals/s computing ${
          (100 * throughput.kmeans_pruning).toFixed(0)
        }% of brute force, matvec ${g(throughput.dense_bytes_per_s)} GB/s dense, ` +
        `${g(throughput.codebook_bytes_per_s)} GB/s codebook`,
    );
  }
  if (shards) {
    const est = throughput ? " est. time |" : "";
    console.log(`\n| shard | blocks | share of the cluster work |${est}`);
    console.log(`| --- | --- | --- |${throughput ? " --- |" : ""}`);
    for (const r of shards) {
      const t = r.seconds === null ? "" : ` ${humanSeconds(r.seconds)} |`;
      console.log(`| ${r.shard} | ${unitList(r.blocks)} | ${(100 * r.share).toFixed(1)}% |${t}`);
    }
  }
  const over = stages.filter((s) => !s.fits).map((s) => s.stage);
  console.log(fits ? "fits" : `does not fit: ${over.join(", ")}`);
  return 0;
}

/** The rates of a --throughput FILE; any problem is one UserError line naming the file. */
async function readThroughput(file: string): Promise<Throughput> {
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (e) {
    throw new UserError(`plan: --throughput ${file}: ${(e as Error).message.split("\n")[0]}`);
  }
  try {
    return parseThroughput(JSON.parse(text));
  } catch (e) {
    throw new UserError(`plan: --throughput ${file}: ${(e as Error).message.split("\n")[0]}`);
  }
}

/** --weighting / --stats: which statistics the stats stage gathers (absent: no stats stage). */
function statsFlags(
  cmd: string,
  weighting: unknown,
  stats: unknown,
): { stats?: "diag" | "full" } {
  if (weighting !== undefined && weighting !== "none" && weighting !== "activations") {
    throw new UserError(`${cmd}: --weighting must be none or activations (got "${weighting}")`);
  }
  if (stats !== undefined && stats !== "none" && stats !== "diag" && stats !== "full") {
    throw new UserError(`${cmd}: --stats must be none, diag or full (got "${stats}")`);
  }
  if (stats === "diag" || stats === "full") return { stats };
  return weighting === "activations" ? { stats: "diag" } : {};
}
