// `cluscomp finetune`: whole-model training of a compressed folder's codebooks (codes fixed).
import { UserError } from "../errors.ts";
import { RunControl } from "../runner/control.ts";
import { finetuneModel, type FinetuneModelSettings } from "../pipeline/train.ts";
import { Progress } from "../util/progress.ts";
import { bytesFlag, durationFlag, intFlag, numberFlag, parseFlags, requireString } from "./args.ts";

export const FINETUNE_HELP =
  `cluscomp finetune: train a compressed model's codebooks end to end (codes stay fixed)

Usage: deno task finetune --model COMPRESSED --data FILE --out DIR [options]
       deno task finetune --model COMPRESSED --teacher ORIGINAL --teacher-data N --out DIR

Every codebook of every compressed linear learns on next-token cross-entropy over the whole
model (AdamW; the backward recomputes each block, so only each block's input is kept). With
--teacher the loss is distillation from the full-precision teacher's next-token distribution
(its top-k cached in the work directory; the teacher runs before training, never beside it).

Data (--format auto picks by extension and first record):
  plain text                       tokenized once, cut into windows of --seqlen + 1 tokens
  JSON Lines {"text": ...}         records joined with EOS, cut into windows
  JSON Lines {"instruction", "input", "output"}
                                   Alpaca prompt template, one example per window; the loss
                                   covers only the response tokens (and the closing EOS)

  --model DIR            a cluscomp-compressed folder
  --out DIR              the finetuned folder (written whole at the end, atomically)
  --work DIR             work directory with checkpoints (default OUT.work)
  --data FILE            training data (or --teacher-data)
  --format F             auto (default), text, jsonl or alpaca
  --eval-data FILE       held-out data; default: --holdout of the training windows
  --holdout H            share (< 1) or count of windows held out (default 0.1)
  --seqlen L             tokens per window (default 256)
  --batch B              windows per step, by gradient accumulation (default 8)
  --steps S | --epochs E steps in all, or passes over the training windows (default 1 epoch)
  --lr LR                peak AdamW learning rate (default 1e-4)
  --warmup W             linear warmup steps (default 5% of the steps)
  --schedule S           linear (default), cosine or constant
  --weight-decay W       AdamW weight decay of codebooks and head (default 0)
  --eval-every K         held-out perplexity every K steps (default 10 evaluations); the best
                         evaluation's tensors are what the output holds
  --train P              also train: norms, head, or norms,head (codebooks always train)
  --teacher DIR          the original full-precision model: distillation
  --kd-weight W          weight of the teacher term, the rest cross-entropy (default 1)
  --topk K               teacher probabilities kept per position (default 64)
  --temperature T        softmax temperature of the teacher (default 1)
  --teacher-data N       without --data: the teacher writes N tokens of training text itself
                         (sampled at --temperature, seeded)
  --seed S               seed (default 0)
  --gpu-memory SIZE      GPU memory to use (default 2GiB): the teacher's batches, and whether
                         the trainer keeps the code indexes on the GPU or on the host
  --restart STAGE        recompute from STAGE on (data, teacher, train)
  --time-budget T        stop at the next checkpoint before T is exceeded and exit 75
  --json                 print the result as one JSON object on stdout
  --quiet                no progress on stderr
  -h, --help             this text

Exit codes as compress: 0 done; 1 bad input; 3 internal error; 75 run again; 130 stopped.
`;

export async function finetuneMain(argv: string[]): Promise<number> {
  const cmd = "finetune";
  const { values } = parseFlags(cmd, argv, {
    model: { type: "string" },
    out: { type: "string" },
    work: { type: "string" },
    data: { type: "string" },
    format: { type: "string" },
    "eval-data": { type: "string" },
    holdout: { type: "string" },
    seqlen: { type: "string" },
    batch: { type: "string" },
    steps: { type: "string" },
    epochs: { type: "string" },
    lr: { type: "string" },
    warmup: { type: "string" },
    schedule: { type: "string" },
    "weight-decay": { type: "string" },
    "eval-every": { type: "string" },
    train: { type: "string" },
    teacher: { type: "string" },
    "kd-weight": { type: "string" },
    topk: { type: "string" },
    temperature: { type: "string" },
    "teacher-data": { type: "string" },
    seed: { type: "string" },
    "gpu-memory": { type: "string" },
    restart: { type: "string" },
    "time-budget": { type: "string" },
    json: { type: "boolean" },
    quiet: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(FINETUNE_HELP);
    return 0;
  }
  const settings = finetuneSettings(values);
  const budgetMs = durationFlag(cmd, values["time-budget"], "time-budget");
  const progress = new Progress(Boolean(values.quiet));
  const r = await finetuneModel(settings, progress, new RunControl(budgetMs));
  if (values.json) console.log(JSON.stringify(r));
  else {
    console.log(
      `finetune: ${r.report.steps} steps -> ${r.out}; held-out perplexity ${
        r.ppl_before.toFixed(4)
      } -> ${r.ppl_after.toFixed(4)} (best at step ${r.report.bestStep})`,
    );
  }
  return 0;
}

/** Settings from parsed flags; every bad flag is one UserError naming it. */
export function finetuneSettings(
  values: Record<string, string | boolean | (string | boolean)[] | undefined>,
): FinetuneModelSettings {
  const cmd = "finetune";
  const model = requireString(cmd, values.model, "model");
  const out = requireString(cmd, values.out, "out");
  const pick = <T extends string>(flag: string, allowed: readonly T[], def: T): T => {
    const v = values[flag] ?? def;
    if (!allowed.includes(v as T)) {
      throw new UserError(`${cmd}: --${flag} must be one of ${allowed.join(", ")} (got "${v}")`);
    }
    return v as T;
  };
  const parts = String(values.train ?? "").split(",").filter((p) => p !== "");
  for (const p of parts) {
    if (p !== "norms" && p !== "head") {
      throw new UserError(`${cmd}: --train takes norms, head or norms,head (got "${p}")`);
    }
  }
  if (values.steps !== undefined && values.epochs !== undefined) {
    throw new UserError(`${cmd}: give --steps or --epochs, not both`);
  }
  const steps = values.steps === undefined ? null : intFlag(cmd, values.steps, "steps", 1);
  const epochs = intFlag(cmd, values.epochs, "epochs", 1, 1);
  const holdout = numberFlag(cmd, values.holdout, "holdout", { min: 0, def: 0.1 });
  if (holdout >= 1 && !Number.isInteger(holdout)) {
    throw new UserError(
      `${cmd}: --holdout must be a share below 1 or a whole count (got ${holdout})`,
    );
  }
  const teacherData = values["teacher-data"] === undefined
    ? undefined
    : intFlag(cmd, values["teacher-data"], "teacher-data", 1);
  const kdWeight = numberFlag(cmd, values["kd-weight"], "kd-weight", { min: 0, def: 1 });
  if (kdWeight > 1) throw new UserError(`${cmd}: --kd-weight must be in [0, 1] (got ${kdWeight})`);
  return {
    model,
    out,
    work: (values.work as string | undefined) ?? `${out}.work`,
    data: values.data as string | undefined,
    format: pick("format", ["auto", "text", "jsonl", "alpaca"] as const, "auto"),
    evalData: values["eval-data"] as string | undefined,
    holdout,
    teacher: values.teacher as string | undefined,
    teacherData,
    topk: intFlag(cmd, values.topk, "topk", 1, 64),
    temperature: numberFlag(cmd, values.temperature, "temperature", { exclusiveMin: 0, def: 1 }),
    steps,
    epochs,
    train: {
      seqlen: intFlag(cmd, values.seqlen, "seqlen", 2, 256),
      batch: intFlag(cmd, values.batch, "batch", 1, 8),
      lr: numberFlag(cmd, values.lr, "lr", { min: 0, def: 1e-4 }),
      // -1: 5% of the steps, resolved once the steps are known.
      warmup: values.warmup === undefined ? -1 : intFlag(cmd, values.warmup, "warmup", 0),
      schedule: pick("schedule", ["linear", "cosine", "constant"] as const, "linear"),
      weightDecay: numberFlag(cmd, values["weight-decay"], "weight-decay", { min: 0, def: 0 }),
      evalEvery: values["eval-every"] === undefined
        ? -1
        : intFlag(cmd, values["eval-every"], "eval-every", 1),
      trainNorms: parts.includes("norms"),
      trainHead: parts.includes("head"),
      kdWeight,
      seed: intFlag(cmd, values.seed, "seed", 0, 0),
    },
    gpuBudget: bytesFlag(cmd, values["gpu-memory"], "gpu-memory", 2 ** 31),
    restart: values.restart as string | undefined,
  };
}
