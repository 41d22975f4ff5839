// The time plan's work counts against hand counts on the embedded kjv-llama config, seconds =
// work / rate, and `plan --throughput FILE` end to end (good and bad files). No timing here:
// measured rates belong to benchmarks (src/bench/timeplan.ts).
import assert from "node:assert/strict";
import { loadConfig } from "../../src/io/config.ts";
import {
  estimateSeconds,
  humanSeconds,
  stageWork,
  type Throughput,
  type TimePlanSettings,
} from "../../src/pipeline/timeplan.ts";
import { assertOneErrorLine } from "../cli/errors.ts";

const KJV = new URL("../../fixtures/kjv-llama", import.meta.url).pathname;
const TASK = new URL("../../tasks/plan.ts", import.meta.url).pathname;

const S: TimePlanSettings = {
  d: 4,
  n: 16,
  splits: 1,
  iters: 5,
  restarts: 2,
  calibSamples: 10,
  calibSeqlen: 16,
  holdout: 0.1,
  epochs: 3,
  extraTerm: false,
  finetune: true,
  evalSeqlen: 32,
  evalTokens: 100,
  newTokens: 8,
};

// kjv-llama: hidden 128, intermediate 384, 4 layers, 4 heads, 2 KV heads, head_dim 32, vocab 1024.
// Linears (in x out): q 128x128, k 128x64, v 128x64, o 128x128, gate/up 128x384, down 384x128.
const P = 128 * 128 + 2 * 128 * 64 + 128 * 128 + 3 * 128 * 384; // 196,608 per block

/** Hand counts for S (see each stage's comment). */
const HAND = {
  // vectors in * ceil(out / 4): 4096 + 2048 + 2048 + 4096 + 3 * 12288 = 49,152 per block;
  // x 16 centroids x (1 + 5) passes x 2 restarts x 4 layers.
  cluster: 49_152 * 16 * 6 * 2 * 4, // 37,748,736
  // T = 16; forward F = 2 P T + 4 * 4 heads * 32 * 16^2 = 6,291,456 + 131,072 = 6,422,528;
  // backward 2 P T + 2 * (o + gate + up + down = 163,840) * T + 2.5 * 131,072 = 11,862,016.
  // 10 windows, 1 held out, 9 train: teacher 10 F, initial held-out F, 3 epochs of
  // (9 (F + B) + F), student outputs 10 F; x 4 layers.
  finetune: 4 * (10 * 6_422_528 + 6_422_528 + 3 * (9 * (6_422_528 + 11_862_016) + 6_422_528) +
    10 * 6_422_528), // 2,591,293,440
  // 3 epochs x 9 steps x 16 P bytes x 4 layers.
  finetuneBytes: 4 * 3 * 9 * 16 * P, // 339,738,624
  // 100 tokens at 32: 3 windows, 96 tokens. Linears 2 P * 4 layers * 96; attention
  // 4 * 4 * 32 * 32^2 per window and layer x 12; lm_head 2 * 1024 * 128 * 96.
  evalLinears: 2 * P * 4 * 96, // 150,994,944
  evalRest: 12 * 4 * 4 * 32 * 32 * 32 + 2 * 1024 * 128 * 96, // 31,457,280
  // Per token: codes at 4 bits (in * cols / 2 bytes: 24,576 per block) + 7 codebooks of
  // 16 x 4 f32 (1,792), x 4 layers; lm_head 1024 x 128 f32; KV 4 layers x 2 x 64 x 4 bytes per
  // position, positions 1 + 2 + ... + 8 = 36.
  generateCodebook: 8 * 4 * (24_576 + 1_792), // 843,776
  generateDense: 8 * 1024 * 128 * 4 + 4 * 2 * 64 * 4 * 36, // 4,268,032
};

const RATES: Throughput = {
  adapter: "test",
  matmul_flops_per_s: 2e9,
  codebook_flops_per_s: 5e8,
  kmeans_evals_per_s: 1e8,
  kmeans_pruning: 0.25,
  dense_bytes_per_s: 4e9,
  codebook_bytes_per_s: 1e9,
};

const EXPECTED_SECONDS: Record<string, number> = {
  cluster: HAND.cluster * 0.25 / 1e8,
  finetune: HAND.finetune / 2e9 + HAND.finetuneBytes / 4e9,
  eval: HAND.evalLinears / 5e8 + HAND.evalRest / 2e9,
  "eval-original": (HAND.evalLinears + HAND.evalRest) / 2e9,
  generate: HAND.generateCodebook / 1e9 + HAND.generateDense / 4e9,
};

const close = (a: number, b: number, what: string) =>
  assert.ok(Math.abs(a - b) <= 1e-9 * Math.abs(b), `${what}: ${a} != ${b}`);

Deno.test("stageWork: teacher and train rows, one epoch over the training windows", async () => {
  const cfg = await loadConfig(KJV);
  const P = cfg.hidden * (2 * cfg.hidden + 2 * cfg.kvHeads * cfg.headDim) +
    3 * cfg.hidden * cfg.intermediate;
  const T = 16, W = 10;
  const fwd = cfg.layers * (2 * P * T + 4 * cfg.heads * cfg.headDim * T * T) +
    2 * cfg.vocab * cfg.hidden * T;
  const w = Object.fromEntries(
    stageWork(cfg, { ...S, train: { seqlen: T, windows: W } }).map((x) => [x.stage, x]),
  );
  assert.equal(w.teacher.matmul_flops, W * fwd);
  assert.equal(w.train.matmul_flops, 5 * W * fwd);
  assert.equal(w.train.kmeans_evals + w.train.codebook_flops + w.train.dense_bytes, 0);
});

Deno.test("stageWork: hand counts on kjv-llama", async () => {
  const cfg = await loadConfig(KJV);
  const w = Object.fromEntries(stageWork(cfg, S).map((x) => [x.stage, x]));
  assert.deepEqual(Object.keys(w), ["cluster", "finetune", "eval", "eval-original", "generate"]);
  assert.equal(w.cluster.kmeans_evals, 37_748_736);
  assert.equal(w.cluster.kmeans_evals, HAND.cluster);
  assert.equal(w.finetune.matmul_flops, 2_591_293_440);
  assert.equal(w.finetune.matmul_flops, HAND.finetune);
  assert.equal(w.finetune.dense_bytes, HAND.finetuneBytes);
  assert.equal(w.eval.codebook_flops, HAND.evalLinears);
  assert.equal(w.eval.matmul_flops, HAND.evalRest);
  assert.equal(w["eval-original"].matmul_flops, HAND.evalLinears + HAND.evalRest);
  assert.equal(w["eval-original"].codebook_flops, 0);
  assert.equal(w.generate.codebook_bytes, HAND.generateCodebook);
  assert.equal(w.generate.dense_bytes, HAND.generateDense);
});

Deno.test("stageWork: settings scale the counts they should", async () => {
  const cfg = await loadConfig(KJV);
  const at = (s: Partial<TimePlanSettings>) =>
    Object.fromEntries(stageWork(cfg, { ...S, ...s }).map((x) => [x.stage, x]));
  // Passes = iters + 1; restarts multiply; splits leave the count unchanged (N / splits each).
  assert.equal(at({ iters: 11 }).cluster.kmeans_evals, 49_152 * 16 * 12 * 2 * 4);
  assert.equal(at({ restarts: 1 }).cluster.kmeans_evals, HAND.cluster / 2);
  assert.equal(at({ splits: 2 }).cluster.kmeans_evals, HAND.cluster);
  // The extra term adds one teacher pass per window and block.
  assert.equal(
    at({ extraTerm: true }).finetune.matmul_flops,
    HAND.finetune + 4 * 10 * 6_422_528,
  );
  // No finetune: no row.
  assert.equal(at({ finetune: false }).finetune, undefined);
  // Zero epochs: teacher, initial evaluation and student outputs only.
  assert.equal(at({ epochs: 0 }).finetune.matmul_flops, 4 * 21 * 6_422_528);
});

Deno.test("estimateSeconds = work / rate, with the k-means pruning share", async () => {
  const cfg = await loadConfig(KJV);
  for (const w of stageWork(cfg, S)) {
    close(estimateSeconds(w, RATES), EXPECTED_SECONDS[w.stage], w.stage);
  }
  const one = { ...RATES, kmeans_pruning: 1 };
  close(estimateSeconds(stageWork(cfg, S)[0], one), HAND.cluster / 1e8, "cluster, no pruning");
  assert.equal(humanSeconds(192), "3 min");
  assert.equal(humanSeconds(41 * 60), "41 min");
  assert.equal(humanSeconds(3.2 * 3600), "3.2 h");
  assert.equal(humanSeconds(12), "12 s");
  assert.equal(humanSeconds(5 * 86400), "5.0 d");
});

const FLAGS = [
  "--config",
  `${KJV}/config.json`,
  "--gpu-memory",
  "1GB",
  "--d",
  "4",
  "--n",
  "16",
  "--iters",
  "5",
  "--restarts",
  "2",
  "--calib-samples",
  "10",
  "--calib-seqlen",
  "16",
  "--epochs",
  "3",
  "--eval-seqlen",
  "32",
  "--eval-tokens",
  "100",
  "--new-tokens",
  "8",
];

async function runPlan(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", TASK, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

async function tempJson(value: unknown): Promise<string> {
  const file = await Deno.makeTempFile({ suffix: ".json" });
  await Deno.writeTextFile(file, typeof value === "string" ? value : JSON.stringify(value));
  return file;
}

Deno.test("plan --throughput FILE: seconds per stage from the file's rates", async () => {
  const file = await tempJson(RATES);
  try {
    const r = await runPlan([...FLAGS, "--throughput", file, "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    assert.equal(out.throughput.matmul_flops_per_s, 2e9);
    const byStage = Object.fromEntries(
      (out.stages as { stage: string; seconds: number | null }[]).map((s) => [s.stage, s.seconds]),
    );
    for (const [stage, want] of Object.entries(EXPECTED_SECONDS)) {
      close(byStage[stage]!, want, stage);
    }
    assert.equal(byStage.export, null);

    // The JSON of a run with rates is itself a valid --throughput file.
    const again = await tempJson(r.stdout);
    try {
      const t = await runPlan([...FLAGS, "--throughput", again]);
      assert.equal(t.code, 0, t.stderr);
      assert.match(t.stdout, /\| est\. time \|/);
      const row = t.stdout.split("\n").find((l) => l.startsWith("| cluster |"))!;
      assert.ok(row.includes(`| ${humanSeconds(EXPECTED_SECONDS.cluster)} |`), row);
    } finally {
      await Deno.remove(again);
    }
  } finally {
    await Deno.remove(file);
  }
});

Deno.test("plan without --measure or --throughput: no time column, no seconds", async () => {
  const r = await runPlan([...FLAGS, "--json"]);
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.equal(out.throughput, undefined);
  assert.ok(out.stages.every((s: object) => !("seconds" in s)));
  const t = await runPlan(FLAGS);
  assert.equal(t.code, 0, t.stderr);
  assert.doesNotMatch(t.stdout, /est\. time/);
});

Deno.test("plan --throughput: a bad file is one error line and exit 1", async () => {
  const { matmul_flops_per_s: _, ...missing } = RATES;
  const cases: [string, unknown, string[]][] = [
    ["missing rate", missing, ["--throughput", "matmul_flops_per_s"]],
    ["negative rate", { ...RATES, dense_bytes_per_s: -1 }, ["dense_bytes_per_s"]],
    ["string rate", { ...RATES, kmeans_evals_per_s: "fast" }, ["kmeans_evals_per_s"]],
    ["not JSON", "{ nope", ["--throughput"]],
    ["not an object", "[1, 2]", ["throughput object"]],
  ];
  for (const [name, value, needles] of cases) {
    const file = await tempJson(value);
    try {
      const r = await runPlan([...FLAGS, "--throughput", file]);
      assert.equal(r.code, 1, `${name}: ${r.stderr}`);
      assertOneErrorLine(r, file, ...needles);
    } finally {
      await Deno.remove(file);
    }
  }
  const gone = `${await Deno.makeTempDir()}/absent.json`;
  const r = await runPlan([...FLAGS, "--throughput", gone]);
  assert.equal(r.code, 1, r.stderr);
  assertOneErrorLine(r, gone);
});
