// Several calibration windows per finetuning step (--finetune-batch): one window per step keeps
// the bytes finetuning wrote before batching existed; four per step train with fewer steps,
// resume to the same bytes after a stop, and take the GPU memory the plan says; the flag's bad
// values are one clear error each.
import assert from "node:assert/strict";
import type { BlockReport } from "../../src/finetune/stage.ts";
import { packWindows, unpackWindows } from "../../src/finetune/stage.ts";
import { getGpu } from "../../src/gpu/device.ts";
import { loadConfig } from "../../src/io/config.ts";
import { compress, type CompressSettings } from "../../src/pipeline/compress.ts";
import { planMemory } from "../../src/pipeline/memplan.ts";
import { EXIT_RESUME, RunControl, StopRun } from "../../src/runner/control.ts";
import { Progress, type ProgressEvent } from "../../src/util/progress.ts";
import { assertSameOutputs, runTask } from "../pipeline/run.ts";
import { KJV, quickSettings } from "../settings.ts";

/**
 * sha256 of the finetuned shards of quickSettings(KJV, { bits: 2, d: 2 }, finetune) on llvmpipe,
 * written by the code before batching existed (one window per step). A kernel whose arithmetic
 * changes on purpose changes these: check the change, then update them.
 */
const GOLDEN: Record<string, string> = {
  "model-00001-of-00005.safetensors":
    "aa752304e7c4d97efb1c2e59f779c56f981c1e777c1f09df32c1db2e450853b9",
  "model-00002-of-00005.safetensors":
    "d54962098f6d8e3b2eb9e857e785064b3bb63207d752564a9762022f9353c88b",
  "model-00003-of-00005.safetensors":
    "d422b1b6a9a8716b3ca12776662cc7333105a30c5d20a1a63f19d1175e9d410c",
  "model-00004-of-00005.safetensors":
    "00bd34974940db3e9d42aed17b090aa3bf3d75705f7f6de31dff8fbf51bcd682",
  "model-00005-of-00005.safetensors":
    "ea80a5bd223a88b5ff71f0553e6a2a2c80cfccab324dfa9d8671417fad445e8b",
};
/** Block 0's held-out MSE after each epoch, from the same run. */
const GOLDEN_MSE0 = [0.09121499143657275, 0.0837705426820321];

async function sha256(path: string): Promise<string> {
  const h = new Uint8Array(await crypto.subtle.digest("SHA-256", await Deno.readFile(path)));
  return [...h].map((x) => x.toString(16).padStart(2, "0")).join("");
}

/** quickSettings with `batch` windows per finetuning step (absent: the default of one). */
function settings(dir: string, batch?: number): CompressSettings {
  const s = quickSettings(KJV, dir, { bits: 2, d: 2 }, { finetune: true });
  if (batch === undefined) return s;
  return { ...s, finetune: { ...s.finetune!, train: { ...s.finetune!.train, batch } } };
}

/** Prints nothing; notes when a finetune block has finished. */
class Quiet extends Progress {
  stopAfter = -1;
  stop = false;
  constructor() {
    super(true);
  }
  override update(e: ProgressEvent): void {
    if (e.stage === "finetune" && e.block === this.stopAfter && "mse" in e) this.stop = true;
  }
}

/** Stops the run at the first unit boundary after the block finished. */
class StopControl extends RunControl {
  constructor(readonly p: Quiet) {
    super(null);
  }
  override checkpoint(): void {
    if (this.p.stop) throw new StopRun(EXIT_RESUME, "stopped by the test");
    super.checkpoint();
  }
}

const blocks = (r: { finetune?: { blocks: BlockReport[] } }) =>
  r.finetune!.blocks.map(({ seconds: _, ...b }) => b);

Deno.test("windows side by side and back, a partial group padded with zeros", () => {
  const H = 3, T = 2, B = 3;
  const xs = [new Float32Array([1, 2, 3, 4, 5, 6]), new Float32Array([7, 8, 9, 10, 11, 12])];
  const packed = packWindows(xs, B, H, T);
  assert.deepEqual(
    [...packed],
    [1, 2, 7, 8, 0, 0, 3, 4, 9, 10, 0, 0, 5, 6, 11, 12, 0, 0],
  );
  assert.deepEqual(unpackWindows(packed, 2, B, H, T).map((x) => [...x]), xs.map((x) => [...x]));
  // One window per step passes the window through untouched.
  assert.equal(packWindows([xs[0]], 1, H, T), xs[0]);
});

Deno.test("kjv-llama: one window per step writes the bytes it wrote before batching", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-batch1-" });
  try {
    const gpu = await getGpu();
    const r = await compress(settings(dir), new Quiet());
    assert.equal(r.finetune!.blocks[0].steps, 2 * 14);
    if (!gpu.adapterName.includes("llvmpipe")) {
      console.log(`golden bytes are llvmpipe's; ${gpu.adapterName}: not compared`);
      return;
    }
    assert.deepEqual(r.finetune!.blocks[0].epochMse, GOLDEN_MSE0);
    for (const [name, hash] of Object.entries(GOLDEN)) {
      assert.equal(await sha256(`${dir}/out/${name}`), hash, `${name} changed`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("kjv-llama: four windows per step train, resume to the same bytes, fit the plan", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-batch4-" });
  try {
    const gpu = await getGpu();
    const whole = settings(`${dir}/whole`, 4);
    const r0 = await compress(whole, new Quiet());
    // 14 training windows: 4 steps of 4 windows per epoch (the last filled up), 2 epochs.
    for (const b of r0.finetune!.blocks) {
      assert.equal(b.steps, 2 * 4);
      assert.equal(b.tokens, 2 * 4 * 4 * 64);
      assert.ok(b.bestMse < b.initialMse, `block ${b.layer}: ${b.bestMse} >= ${b.initialMse}`);
    }
    // Fewer, averaged steps: not the arithmetic of one window per step.
    assert.notDeepEqual(r0.finetune!.blocks[0].epochMse, GOLDEN_MSE0);

    // Stopped after block 1, the rerun resumes there and ends with the same bytes.
    const again = settings(`${dir}/resumed`, 4);
    const stopAt = new Quiet();
    stopAt.stopAfter = 1;
    const control = new StopControl(stopAt);
    try {
      await assert.rejects(compress(again, stopAt, control), StopRun);
    } finally {
      control.close();
    }
    const r1 = await compress(again, new Quiet());
    await assertSameOutputs(whole.out, again.out);
    assert.deepEqual(blocks(r1), blocks(r0));

    // The memory plan counts the step's four windows of activations (within 10%).
    const q = JSON.parse(await Deno.readTextFile(`${whole.out}/config.json`)).quantization_config;
    const plan = planMemory(await loadConfig(KJV), {
      d: 2,
      n: q.modules["model.layers.0.self_attn.q_proj"].n,
      splits: 1,
      calibSamples: 16,
      calibSeqlen: 64,
      evalSeqlen: 128,
      evalTokens: 128,
      gpuMemory: 2 ** 31,
      maxBinding: gpu.limits.maxBinding,
      finetune: true,
      extraTerm: false,
      finetuneBatch: 4,
    }).find((p) => p.stage === "finetune")!.gpu_bytes;
    const measured = r0.gpu_peak.finetune;
    assert.ok(
      Math.abs(plan - measured) <= 0.1 * measured,
      `planned ${plan} vs measured ${measured} bytes`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("compress: a bad --finetune-batch is one error naming the flag", async () => {
  const base = ["--model", KJV, "--out", "/nonexistent/never", "--calib", `${KJV}/calib.txt`];
  for (const [value, want] of [["0", "integer >= 1"], ["two", "integer >= 1"]]) {
    const r = await runTask("compress", [...base, "--finetune-batch", value]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /--finetune-batch/);
    assert.ok(r.stderr.includes(want), r.stderr);
  }
  const r = await runTask("compress", [
    ...base,
    "--calib-samples",
    "8",
    "--finetune-batch",
    "9",
  ]);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /--finetune-batch 9 exceeds the 8 calibration windows/);
});
