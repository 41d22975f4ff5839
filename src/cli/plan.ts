// `cluscomp plan`: the GPU, host and work-directory bytes each stage will need, and whether it
// fits.
import { UserError } from "../errors.ts";
import { loadConfigFile } from "../io/config.ts";
import { gib, planMemory } from "../pipeline/memplan.ts";
import { bytesFlag, intFlag, parseFlags } from "./args.ts";

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
  --eval-seqlen N        evaluation window length (default 2048)
  --eval-tokens K        evaluation text length in tokens (default 341469, WikiText-2 test)
  --max-binding SIZE     the GPU's maxStorageBufferBindingSize (default 2GiB; llvmpipe: 128MiB)
  --context N            tokens of context for the generate row (default max_position_embeddings)
  --no-finetune          plan without the finetune stage
  --json                 one JSON object: {fits, stages: [{stage, gpu_bytes, host_bytes,
                         disk_bytes}]}
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
    "calib-seqlen": { type: "string" },
    "eval-seqlen": { type: "string" },
    "eval-tokens": { type: "string" },
    "max-binding": { type: "string" },
    context: { type: "string" },
    "no-finetune": { type: "boolean" },
    "extra-term": { type: "boolean" },
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
  const stages = planMemory(cfg, {
    d: intFlag(cmd, values.d, "d", 1, 8),
    n: intFlag(cmd, values.n, "n", 2, 65536),
    splits: intFlag(cmd, values.splits, "splits", 1, 1),
    calibSamples: intFlag(cmd, values["calib-samples"], "calib-samples", 1, 128),
    calibSeqlen: intFlag(cmd, values["calib-seqlen"], "calib-seqlen", 2, 2048),
    evalSeqlen: intFlag(cmd, values["eval-seqlen"], "eval-seqlen", 2, 2048),
    evalTokens: intFlag(cmd, values["eval-tokens"], "eval-tokens", 2, 341469),
    gpuMemory,
    disk,
    ...(values["host-memory"] === undefined
      ? {}
      : { hostMemory: bytesFlag(cmd, values["host-memory"], "host-memory") }),
    maxBinding: bytesFlag(cmd, values["max-binding"], "max-binding", 2 ** 31),
    finetune: !values["no-finetune"],
    extraTerm: Boolean(values["extra-term"]),
    context: intFlag(cmd, values.context, "context", 1, cfg.maxPositions),
  });
  const fits = stages.every((s) => s.fits);
  if (values.json) {
    console.log(JSON.stringify({ fits, gpu_memory: gpuMemory, disk: disk ?? null, stages }));
    return 0;
  }
  const within = gib(gpuMemory) + (disk === undefined ? "" : `, ${gib(disk)} disk`);
  console.log(`| stage | GPU peak | host peak | disk peak | fits ${within} | note |`);
  console.log("| --- | --- | --- | --- | --- | --- |");
  for (const s of stages) {
    console.log(
      `| ${s.stage} | ${gib(s.gpu_bytes)} | ${gib(s.host_bytes)} | ${gib(s.disk_bytes)} | ${
        s.fits ? "yes" : "no"
      } | ${s.note} |`,
    );
  }
  const over = stages.filter((s) => !s.fits).map((s) => s.stage);
  console.log(fits ? "fits" : `does not fit: ${over.join(", ")}`);
  return 0;
}
