// --weighting activations: the k-means weighs each row of W^T by its input feature's second
// moment over the calibration windows (the stats stage). On stories260K at about 2.3 bits without
// finetuning it must beat plain ClusComp on WikiText-2 perplexity (same seed); the stats units
// resume, and a changed calibration is never reused.
import assert from "node:assert/strict";
import { compress, type CompressSettings } from "../../src/pipeline/compress.ts";
import { Progress } from "../../src/util/progress.ts";
import { HAS_SHARED, STORIES, TINYSTORIES, WIKI } from "../shared.ts";
import { compressArgs, runTask } from "./run.ts";

function settings(dir: string, weighting: "none" | "activations"): CompressSettings {
  return {
    model: STORIES,
    out: `${dir}/${weighting}`,
    work: `${dir}/${weighting}.work`,
    method: "cluscomp",
    cluster: {
      bits: 2.3,
      overrides: {},
      splits: 1,
      codebookDtype: "f16",
      iters: 20,
      seed: 0,
      init: "random",
      restarts: 1,
      weighting,
    },
    rtn: { bits: 2, group: 64 },
    calib: { file: TINYSTORIES, samples: 64, seqlen: 128, holdout: 0.1, seed: 0 },
    eval: { text: WIKI, seqlen: 128, maxWindows: 16 },
    gpuBudget: 2 ** 31,
  };
}

Deno.test({
  name: "stories260K at ~2.3 bits, no finetuning: activation-aware ClusComp beats plain on wiki",
  ignore: !HAS_SHARED,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "cluscomp-weighting-" });
    const quiet = new Progress(true);
    const plain = await compress(settings(dir, "none"), quiet);
    const act = await compress(settings(dir, "activations"), quiet);
    console.log(
      `plain ${plain.ppl_compressed!.toFixed(2)} at ${plain.stored_bits_per_weight.toFixed(4)} ` +
        `bits, activations ${act.ppl_compressed!.toFixed(2)} at ` +
        `${act.stored_bits_per_weight.toFixed(4)} bits (original ${act.ppl_original!.toFixed(2)})`,
    );
    for (const r of [plain, act]) assert.ok(r.stored_bits_per_weight <= 2.3 + 1e-9);
    // The weighted (d, n) search ranks pairs by the weighted error: its sample errors differ.
    assert.notDeepEqual(act.plan!.map((p) => p.reason), plain.plan!.map((p) => p.reason));
    assert.ok(
      act.ppl_compressed! < plain.ppl_compressed!,
      `activations ${act.ppl_compressed} should be below plain ${plain.ppl_compressed}`,
    );
    await Deno.remove(dir, { recursive: true });
  },
});

/** The stats units a run computed ("done" lines without "resumed") and resumed. */
function statsUnits(stderr: string): { computed: number; resumed: number } {
  const lines = stderr.split("\n").filter((l) => l.includes('"stage":"stats","done"'));
  const resumed = lines.filter((l) => l.includes('"resumed":"yes"')).length;
  return { computed: lines.length - resumed, resumed };
}

Deno.test({
  name:
    "stats units resume; a changed calibration is refused, then recomputed with --restart stats",
  ignore: !HAS_SHARED,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "cluscomp-stats-resume-" });
    const calib = `${dir}/calib.txt`;
    const text = await Deno.readTextFile(TINYSTORIES);
    await Deno.writeTextFile(calib, text.slice(0, 200_000));
    const args = (extra: string[] = []) =>
      compressArgs(STORIES, `${dir}/out`, [
        "--bits",
        "2.3",
        "--d",
        "2",
        "--iters",
        "3",
        "--no-finetune",
        "--weighting",
        "activations",
        "--calib",
        calib,
        "--calib-samples",
        "8",
        "--calib-seqlen",
        "64",
        ...extra,
      ]);
    const first = await runTask("compress", args());
    assert.equal(first.code, 0, first.stderr);
    assert.deepEqual(statsUnits(first.stderr), { computed: 5, resumed: 0 });
    const stats = (await Deno.readFile(`${dir}/out.work/stats/block-002.safetensors`)).length;
    assert.ok(stats > 0);

    // Same command, output removed: every stats unit (and cluster unit) is reused.
    await Deno.remove(`${dir}/out`, { recursive: true });
    const again = await runTask("compress", args());
    assert.equal(again.code, 0, again.stderr);
    assert.deepEqual(statsUnits(again.stderr), { computed: 0, resumed: 5 });
    assert.ok(!again.stderr.includes('"matrix"'), "no matrix is clustered again");

    // The same file with other text: refused by name, then recomputed with --restart stats.
    await Deno.writeTextFile(calib, text.slice(200_000, 400_000));
    await Deno.remove(`${dir}/out`, { recursive: true });
    const refused = await runTask("compress", args());
    assert.equal(refused.code, 1, refused.stderr);
    assert.match(refused.stderr, /stats settings changed.*--restart stats/);
    const restarted = await runTask("compress", args(["--restart", "stats"]));
    assert.equal(restarted.code, 0, restarted.stderr);
    assert.deepEqual(statsUnits(restarted.stderr), { computed: 5, resumed: 0 });
    assert.ok(restarted.stderr.includes('"matrix"'), "the cluster stage is recomputed");

    // Other calibration windows (count): refused too.
    await Deno.remove(`${dir}/out`, { recursive: true });
    const samples = args().map((a) => (a === "8" ? "9" : a));
    const refused2 = await runTask("compress", samples);
    assert.equal(refused2.code, 1, refused2.stderr);
    assert.match(refused2.stderr, /stats settings changed/);
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "--weighting: bad value, missing calibration text and a non-ClusComp method are one error",
  ignore: !HAS_SHARED,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "cluscomp-weighting-flags-" });
    const base = compressArgs(STORIES, `${dir}/out`, ["--bits", "2.3", "--no-finetune"]);
    const cases: [string[], RegExp][] = [
      [["--weighting", "hessian"], /--weighting must be none or activations/],
      [["--weighting", "activations"], /--weighting activations needs calibration text.*--calib/],
      [
        ["--weighting", "activations", "--method", "rtn", "--calib", TINYSTORIES],
        /--weighting activations is for --method cluscomp/,
      ],
      [
        ["--weighting", "activations", "--calib", `${dir}/missing.txt`],
        /missing\.txt/,
      ],
    ];
    for (const [extra, msg] of cases) {
      const r = await runTask("compress", [...base, ...extra]);
      assert.equal(r.code, 1, `${extra.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, msg);
      assert.ok(!(await exists(`${dir}/out`)), "no output is written");
    }
    await Deno.remove(dir, { recursive: true });
  },
});

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

Deno.test("plan: --weighting activations adds the stats row, --stats full the Gram matrices", async () => {
  const config = new URL("../../fixtures/configs/llama-2-7b.json", import.meta.url).pathname;
  const base = ["--config", config, "--gpu-memory", "48GB", "--json"];
  const rows = async (extra: string[]) => {
    const r = await runTask("plan", [...base, ...extra]);
    assert.equal(r.code, 0, r.stderr);
    const stages = JSON.parse(r.stdout).stages as { stage: string; gpu_bytes: number }[];
    return stages.find((s) => s.stage === "stats");
  };
  assert.equal(await rows([]), undefined);
  const diag = await rows(["--weighting", "activations"]);
  const full = await rows(["--stats", "full"]);
  assert.ok(diag && full, "a stats row");
  // Llama-2-7B: one block's Gram matrices (4096^2 x 3 + 11008^2 floats) are ~654 MiB.
  assert.ok(full.gpu_bytes - diag.gpu_bytes > 650 * 2 ** 20, `${full.gpu_bytes} ${diag.gpu_bytes}`);
  const bad = await runTask("plan", [...base, "--stats", "hessian"]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /--stats must be none, diag or full/);
});
