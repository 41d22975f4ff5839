// The cluster stage split across processes (compress --stage cluster --shard I/N): which shard
// this run is (the flag, or a scheduler's environment), and the deterministic split of the block
// units into N shards balanced by their estimated k-means work.
import { UserError } from "../errors.ts";
import { linearNames, type ModelConfig } from "../io/config.ts";
import { estimateSeconds, type Throughput } from "./timeplan.ts";

export type { ShardId } from "../io/workdir.ts";
import type { ShardId } from "../io/workdir.ts";

/** What a run stops after, and which shard of the cluster stage it is (compress's options). */
export interface StageOptions {
  /** The last stage to run (the method's block stage or "finetune"); absent: all, then export. */
  stage?: string;
  /** Run only this shard of the block stage's units (needs `stage` = the block stage). */
  shard?: ShardId;
}

/** One matrix kind's shape and codebook, as the cost model needs it. */
export interface MatrixShape {
  kind: string;
  d: number;
  n: number;
  splits: number;
}

/** The k-means settings that scale the work of every matrix alike. */
export interface KmeansWork {
  iters: number;
  restarts: number;
}

/**
 * Estimated work of each block's unit: the brute-force k-means distance evaluations of its
 * matrices (as src/pipeline/timeplan.ts counts them), or its weights when there is no codebook
 * plan (RTN, whose cost is linear in the weights).
 */
export function blockCosts(
  cfg: ModelConfig,
  plan: MatrixShape[] | undefined,
  k: KmeansWork,
): number[] {
  return Array.from({ length: cfg.layers }, (_, l) => {
    let cost = 0;
    for (const lin of linearNames(l, cfg)) {
      const p = plan?.find((q) => q.kind === lin.kind);
      if (!p) {
        cost += lin.in * lin.out;
        continue;
      }
      const N = (lin.in / p.splits) * Math.ceil(lin.out / p.d);
      cost += p.splits * N * p.n * (k.iters + 1) * k.restarts;
    }
    return cost;
  });
}

/**
 * Splits units 0..costs.length-1 into `count` shards, balanced by cost: the costliest unit first
 * (ties: the lower index), each to the shard with the least work so far (ties: the lower shard).
 * Deterministic: every shard computes the same split. Each shard's units are in ascending order.
 */
export function splitUnits(costs: number[], count: number): number[][] {
  if (!Number.isInteger(count) || count < 1) throw new Error(`bad shard count ${count}`);
  const order = costs.map((c, i) => ({ c, i })).sort((a, b) => b.c - a.c || a.i - b.i);
  const shards = Array.from({ length: count }, () => ({ units: [] as number[], cost: 0 }));
  for (const { c, i } of order) {
    let best = 0;
    for (let s = 1; s < count; s++) if (shards[s].cost < shards[best].cost) best = s;
    shards[best].units.push(i);
    shards[best].cost += c;
  }
  return shards.map((s) => s.units.sort((a, b) => a - b));
}

/** "2/4" -> {index 2, count 4}; `what` names the flag or variable in the error. */
function parsePair(text: string, what: string): ShardId {
  const m = /^\s*(\d+)\s*\/\s*(\d+)\s*$/.exec(text);
  if (!m) {
    throw new UserError(
      `compress: ${what} must look like I/N with 0 <= I < N, e.g. 0/4 (got "${text}")`,
    );
  }
  return checked(Number(m[1]), Number(m[2]), what, text);
}

function checked(index: number, count: number, what: string, text: string): ShardId {
  if (!Number.isSafeInteger(count) || count < 1) {
    throw new UserError(`compress: ${what}: the shard count must be >= 1 (got "${text}")`);
  }
  if (!Number.isSafeInteger(index) || index < 0 || index >= count) {
    throw new UserError(
      `compress: ${what}: the shard index must be from 0 to ${count - 1} (got "${text}")`,
    );
  }
  return { index, count };
}

/** A non-negative integer from an environment variable, or a UserError naming it. */
function envInt(env: Record<string, string | undefined>, name: string): number {
  const v = env[name]!;
  if (!/^\s*\d+\s*$/.test(v)) {
    throw new UserError(`compress: ${name} must be a non-negative integer (got "${v}")`);
  }
  return Number(v);
}

/**
 * Which shard this run is: `--shard I/N`; else Kubernetes' JOB_COMPLETION_INDEX with
 * `--shards N`; else Slurm's SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT (an array submitted
 * as --array=0-(N-1)); else null (the whole stage). Bad or conflicting values are one UserError
 * naming the flag or variable.
 */
export function resolveShard(
  shard: string | undefined,
  shards: string | undefined,
  env: Record<string, string | undefined>,
): ShardId | null {
  let count: number | undefined;
  if (shards !== undefined) {
    if (!/^\s*\d+\s*$/.test(shards) || Number(shards) < 1) {
      throw new UserError(`compress: --shards must be an integer >= 1 (got "${shards}")`);
    }
    count = Number(shards);
  }
  if (shard !== undefined) {
    const id = parsePair(shard, "--shard");
    if (count !== undefined && count !== id.count) {
      throw new UserError(
        `compress: --shard ${shard} and --shards ${shards} disagree on the shard count`,
      );
    }
    return id;
  }
  if (env.JOB_COMPLETION_INDEX !== undefined) {
    const index = envInt(env, "JOB_COMPLETION_INDEX");
    if (count === undefined) {
      throw new UserError(
        "compress: JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job): give --shards N, " +
          "the Job's completions",
      );
    }
    return checked(index, count, "JOB_COMPLETION_INDEX", `${index} with --shards ${count}`);
  }
  if (env.SLURM_ARRAY_TASK_ID !== undefined) {
    const index = envInt(env, "SLURM_ARRAY_TASK_ID");
    const total = env.SLURM_ARRAY_TASK_COUNT === undefined
      ? undefined
      : envInt(env, "SLURM_ARRAY_TASK_COUNT");
    if (total !== undefined && count !== undefined && total !== count) {
      throw new UserError(
        `compress: SLURM_ARRAY_TASK_COUNT=${total} and --shards ${count} disagree on the shard count`,
      );
    }
    const n = total ?? count;
    if (n === undefined) {
      throw new UserError(
        "compress: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not: give --shards N",
      );
    }
    if (index >= n) {
      throw new UserError(
        `compress: SLURM_ARRAY_TASK_ID=${index} is not below the ${n} array tasks: submit the ` +
          `array as --array=0-${n - 1} (0-based, no step)`,
      );
    }
    return checked(index, n, "SLURM_ARRAY_TASK_ID", String(index));
  }
  if (count !== undefined) {
    throw new UserError(
      "compress: --shards N needs JOB_COMPLETION_INDEX (Kubernetes) or SLURM_ARRAY_TASK_ID " +
        "(Slurm) in the environment; or give --shard I/N",
    );
  }
  return null;
}

/** "1, 5, 9" with runs shortened: "0-3, 8". */
export function unitList(units: number[]): string {
  const parts: string[] = [];
  for (let i = 0; i < units.length;) {
    let j = i;
    while (j + 1 < units.length && units[j + 1] === units[j] + 1) j++;
    parts.push(j > i + 1 ? `${units[i]}-${units[j]}` : units.slice(i, j + 1).join(", "));
    i = j + 1;
  }
  return parts.join(", ");
}

/**
 * Checks a run's stage options against the method's block stage: `stage` must be that stage or
 * "finetune" (with finetuning on), and a shard runs only the block stage.
 */
export function checkStage(opts: StageOptions, blockStage: string, finetunes: boolean): void {
  const valid = finetunes ? [blockStage, "finetune"] : [blockStage];
  if (opts.stage !== undefined && !valid.includes(opts.stage)) {
    throw new UserError(
      `compress: --stage must be ${valid.join(" or ")} for this run (got "${opts.stage}")`,
    );
  }
  if (opts.shard && opts.stage !== blockStage) {
    throw new UserError(
      `compress: shards run only the ${blockStage} stage: give --stage ${blockStage} with --shard`,
    );
  }
}

/** The units of one shard (all units when `shard` is absent); `note` is told the split. */
export function shardUnits(
  costs: number[],
  shard: ShardId | undefined,
  note: (message: string) => void,
): number[] {
  if (!shard) return costs.map((_, i) => i);
  const units = splitUnits(costs, shard.count)[shard.index];
  const total = costs.reduce((a, b) => a + b, 0);
  const mine = units.reduce((a, u) => a + costs[u], 0);
  note(
    `shard ${shard.index}/${shard.count}: blocks [${unitList(units)}] of ${costs.length} ` +
      `(${(100 * mine / (total || 1)).toFixed(1)}% of the estimated work)`,
  );
  return units;
}

/** One shard's row of `deno task plan --shards N`. */
export interface ShardRow {
  shard: string;
  blocks: number[];
  /** Brute-force k-means distance evaluations (before pruning), as the time plan counts them. */
  kmeans_evals: number;
  /** Share of the stage's estimated work. */
  share: number;
}

/** The split `compress --shard I/N` makes, with each shard's work. */
export function shardRows(costs: number[], count: number): ShardRow[] {
  const total = costs.reduce((a, b) => a + b, 0) || 1;
  return splitUnits(costs, count).map((blocks, i) => {
    const work = blocks.reduce((a, u) => a + costs[u], 0);
    return { shard: `${i}/${count}`, blocks, kmeans_evals: work, share: work / total };
  });
}

/**
 * `deno task plan --shards N`: the split of a config's blocks with a uniform codebook shape, and
 * each shard's estimated seconds at the measured rates (null without rates).
 */
export function shardPlan(
  cfg: ModelConfig,
  shape: { d: number; n: number; splits: number },
  k: KmeansWork,
  count: number,
  throughput: Throughput | null,
): (ShardRow & { seconds: number | null })[] {
  const plan = linearNames(0, cfg).map((l) => ({ kind: l.kind, ...shape }));
  return shardRows(blockCosts(cfg, plan, k), count).map((r) => ({
    ...r,
    seconds: throughput
      ? estimateSeconds({
        stage: "cluster",
        kmeans_evals: r.kmeans_evals,
        matmul_flops: 0,
        codebook_flops: 0,
        dense_bytes: 0,
        codebook_bytes: 0,
      }, throughput)
      : null,
  }));
}
