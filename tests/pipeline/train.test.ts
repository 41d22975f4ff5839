// Whole-model finetuning of a compressed folder (deno task finetune) on the embedded kjv-llama:
// the held-out NLL falls (and does not with lr 0: a test of the test), only trained tensors
// change, a SIGKILLed run resumes to the same bytes, Alpaca data and distillation run, and bad
// input is one error line with no output.
import assert from "node:assert/strict";
import { finetuneModel, type FinetuneModelSettings } from "../../src/pipeline/train.ts";
import { Progress } from "../../src/util/progress.ts";
import { assertOneErrorLine } from "../cli/errors.ts";
import { compressedFolder } from "../model/compressed_folder.ts";
import { KJV } from "../settings.ts";
import { changedTensors, folderTensors } from "../util.ts";
import { runTask, runUntil } from "./run.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

/** Small training and held-out texts cut from the fixture's calib.txt and heldout.txt. */
async function texts(dir: string): Promise<{ train: string; heldout: string }> {
  const cut = async (from: string, to: string, chars: number) => {
    await Deno.writeTextFile(to, (await Deno.readTextFile(from)).slice(0, chars));
    return to;
  };
  return {
    train: await cut(`${KJV}/calib.txt`, `${dir}/train.txt`, 6000),
    heldout: await cut(`${KJV}/heldout.txt`, `${dir}/heldout.txt`, 2500),
  };
}

function settings(
  model: string,
  dir: string,
  data: { train: string; heldout: string },
  over: Partial<FinetuneModelSettings["train"]> = {},
): FinetuneModelSettings {
  return {
    model,
    out: `${dir}/out`,
    work: `${dir}/work`,
    data: data.train,
    format: "auto",
    evalData: data.heldout,
    holdout: 0.1,
    topk: 16,
    temperature: 1,
    steps: 6,
    epochs: 1,
    train: {
      seqlen: 32,
      batch: 2,
      lr: 2e-3,
      warmup: 0,
      schedule: "linear",
      weightDecay: 0,
      evalEvery: 3,
      trainNorms: false,
      trainHead: false,
      kdWeight: 1,
      seed: 0,
      ...over,
    },
    gpuBudget: 2 ** 31,
  };
}

Deno.test("finetune: the held-out NLL falls and only codebooks change; with lr 0 nothing does", async () => {
  const model = await compressedFolder(KJV);
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-train-" });
  const data = await texts(dir);
  const r = await finetuneModel(settings(model, dir, data), new Progress(true));
  const nlls = r.report.evals.map((e) => e.nll);
  console.log(
    `initial ${r.report.initialNll}, evals ${nlls.join(", ")}, best ${r.report.bestStep}`,
  );
  assert.equal(r.report.steps, 6);
  assert.deepEqual(r.report.evals.map((e) => e.step), [3, 6]);
  assert.ok(r.report.bestNll < r.report.initialNll, "held-out NLL must fall below the input's");
  assert.ok(r.report.bestStep > 0);
  assert.ok(r.ppl_after < r.ppl_before);
  const before = await folderTensors(model), after = await folderTensors(`${dir}/out`);
  const diff = changedTensors(before, after);
  assert.ok(diff.length > 0 && diff.every((n) => n.endsWith(".codebook")), diff.join(", "));
  for (const f of ["train_report.json", "train_report.md", "train_loss.svg"]) {
    assert.ok((await Deno.stat(`${dir}/out/${f}`)).size > 0, f);
  }
  // Test of the test: no learning, no improvement, the output's tensors are the input's.
  const dir0 = await Deno.makeTempDir({ prefix: "cluscomp-train-" });
  const r0 = await finetuneModel(
    settings(model, dir0, await texts(dir0), { lr: 0 }),
    new Progress(true),
  );
  assert.equal(r0.report.bestStep, 0);
  assert.ok(r0.report.evals.every((e) => e.nll === r0.report.initialNll));
  assert.deepEqual(changedTensors(before, await folderTensors(`${dir0}/out`)), []);
  await Deno.remove(dir, { recursive: true });
  await Deno.remove(dir0, { recursive: true });
});

Deno.test("finetune: a run SIGKILLed after a checkpoint resumes to the same bytes", async () => {
  const model = await compressedFolder(KJV);
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-train-kill-" });
  const data = await texts(dir);
  const args = (out: string) => [
    "--model",
    model,
    "--out",
    out,
    "--data",
    data.train,
    "--eval-data",
    data.heldout,
    "--seqlen",
    "32",
    "--batch",
    "2",
    "--steps",
    "6",
    "--eval-every",
    "2",
    "--lr",
    "2e-3",
  ];
  const whole = await runTask("finetune", args(`${dir}/whole`));
  assert.equal(whole.code, 0, whole.stderr);
  // Killed once the first segment's checkpoint is kept (its progress line is logged after).
  const killed = await runUntil(
    "finetune",
    args(`${dir}/resumed`),
    /"stage":"train","done":1,"total":3/,
  );
  assert.ok(killed.killed, "the kill must land before the run finishes");
  const rerun = await runTask("finetune", args(`${dir}/resumed`));
  assert.equal(rerun.code, 0, rerun.stderr);
  assert.match(rerun.stderr, /"stage":"train","done":1,"total":3,"step":2,"resumed":"yes"/);
  assert.deepEqual(
    changedTensors(await folderTensors(`${dir}/whole`), await folderTensors(`${dir}/resumed`)),
    [],
    "the resumed run writes the same tensors",
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("finetune: Alpaca data with distillation from the original, and teacher-written text", async () => {
  const model = await compressedFolder(KJV);
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-train-kd-" });
  const alpaca = `${ROOT}fixtures/alpaca-kjv.jsonl`;
  const s = settings(model, dir, { train: alpaca, heldout: alpaca }, { seqlen: 96, kdWeight: 0.5 });
  const r = await finetuneModel(
    {
      ...s,
      evalData: undefined,
      holdout: 4,
      teacher: KJV,
      steps: 4,
      train: { ...s.train, evalEvery: 2 },
    },
    new Progress(true),
  );
  assert.equal(r.data.format, "alpaca");
  assert.equal(r.data.evalWindows, 4);
  assert.equal(r.teacher, KJV);
  assert.ok(r.report.losses.every((l) => Number.isFinite(l.loss)));
  assert.ok(r.report.tokens < r.report.steps * s.train.batch * 96, "only response tokens count");
  const units = (await Array.fromAsync(Deno.readDir(`${dir}/work/teacher`))).map((e) => e.name);
  assert.ok(units.includes("topk.safetensors"), units.join(", "));

  const dir2 = await Deno.makeTempDir({ prefix: "cluscomp-train-kd-" });
  const s2 = settings(model, dir2, { train: alpaca, heldout: alpaca });
  const r2 = await finetuneModel(
    {
      ...s2,
      data: undefined,
      evalData: undefined,
      holdout: 2,
      teacher: KJV,
      teacherData: 600,
      steps: 2,
    },
    new Progress(true),
  );
  assert.match(r2.data.source, /teacher text \(600 tokens\)/);
  const text = await Deno.readTextFile(`${dir2}/work/teacher/text.txt`);
  assert.ok(text.length > 100, "the teacher wrote its text");
  await Deno.remove(dir, { recursive: true });
  await Deno.remove(dir2, { recursive: true });
});

Deno.test("finetune: bad input is one error line, exit 1, and no output folder", async () => {
  const model = await compressedFolder(KJV);
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-train-bad-" });
  const data = await texts(dir);
  const bad = `${dir}/bad.jsonl`;
  await Deno.writeTextFile(bad, '{"text": "In the beginning"}\n{"text": \n');
  const out = `${dir}/out`;
  const base = ["--out", out, "--seqlen", "32", "--steps", "2"];
  const cases: [string[], string[]][] = [
    [["--model", model, ...base], ["--data"]],
    [["--model", model, "--data", data.train, "--steps", "2", "--epochs", "1", "--out", out], [
      "--steps",
      "--epochs",
    ]],
    [["--model", model, "--data", data.train, "--train", "bias", ...base], ["--train", "bias"]],
    [["--model", model, "--data", data.train, "--kd-weight", "2", ...base], ["--kd-weight"]],
    [["--model", KJV, "--data", data.train, ...base], [KJV, "cluscomp"]],
    [["--model", model, "--data", `${dir}/missing.txt`, ...base], ["--data", "missing.txt"]],
    [["--model", model, "--data", bad, ...base], ["bad.jsonl", ":2"]],
  ];
  for (const [args, needles] of cases) {
    const r = await runTask("finetune", args);
    assertOneErrorLine(r, ...needles);
    assert.equal(r.code, 1);
    await assert.rejects(() => Deno.stat(out), "no output folder");
  }
  await Deno.remove(dir, { recursive: true });
});
