// Finetuning under a host-memory cap streams the calibration activations through files in the
// work directory instead of holding every window in host memory, and changes nothing: on the
// embedded kjv-llama the output folder of a run capped at 1 byte (every window streamed) is
// byte-identical to the same run without a cap (the reports, which hold timings, aside: their
// block losses are equal). The capped run must have taken the streaming path (its note, and
// windows written to and read from disk) and left no scratch files behind;
// a capped run stopped after block 1 resumes (replaying blocks 0-1) to the same bytes.
import assert from "node:assert/strict";
import type { BlockReport } from "../../src/finetune/stage.ts";
import { streamStats } from "../../src/finetune/stream.ts";
import { compress } from "../../src/pipeline/compress.ts";
import { EXIT_RESUME, RunControl, StopRun } from "../../src/runner/control.ts";
import { Progress, type ProgressEvent } from "../../src/util/progress.ts";
import { assertSameOutputs } from "../pipeline/run.ts";
import { KJV, quickSettings } from "../settings.ts";

/** Keeps every note, prints nothing. */
class Notes extends Progress {
  notes: string[] = [];
  constructor() {
    super(true);
  }
  override note(stage: string, message: string): void {
    this.notes.push(`${stage}: ${message}`);
  }
}

/** Notes which finetune blocks have finished. */
class StopAfterBlock extends Notes {
  stop = false;
  constructor(readonly block: number) {
    super();
  }
  override update(e: ProgressEvent): void {
    if (e.stage === "finetune" && e.block === this.block && "mse" in e) this.stop = true;
  }
}

/** Stops the run at the first unit boundary after the block finished. */
class StopControl extends RunControl {
  constructor(readonly p: StopAfterBlock) {
    super(null);
  }
  override checkpoint(): void {
    if (this.p.stop) throw new StopRun(EXIT_RESUME, "stopped by the test");
    super.checkpoint();
  }
}

/** The block reports without their timings. */
const blocks = (r: { finetune?: { blocks: BlockReport[] } }) =>
  r.finetune!.blocks.map(({ seconds: _, ...b }) => b);

Deno.test("kjv-llama: finetuning streamed under a host-memory cap writes the same bytes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-stream-" });
  try {
    const plain = quickSettings(KJV, `${dir}/plain`, { bits: 2, d: 2 }, { finetune: true });
    const p0 = new Notes();
    const r0 = await compress(plain, p0);
    assert.ok(!p0.notes.some((n) => n.includes("streamed")), "uncapped run streamed");

    const base = quickSettings(KJV, `${dir}/capped`, { bits: 2, d: 2 }, { finetune: true });
    const capped = {
      ...base,
      finetune: { ...base.finetune!, train: { ...base.finetune!.train, hostBudget: 1 } },
    };
    const before = { ...streamStats };
    const p1 = new Notes();
    const r1 = await compress(capped, p1);
    assert.ok(p1.notes.some((n) => n.includes("activations streamed")), p1.notes.join("\n"));
    // 4 blocks, 16 windows: at least the inputs and both outputs of every block went to disk,
    // and every training step read its windows back.
    assert.ok(streamStats.written - before.written >= 4 * 2 * 16, `${streamStats.written}`);
    assert.ok(streamStats.read - before.read >= 4 * 2 * 2 * 14, `${streamStats.read}`);
    await assert.rejects(Deno.stat(`${capped.work}/finetune/streams`), Deno.errors.NotFound);

    // Every file but the reports (timings, paths) byte for byte; the reports' losses exactly.
    await assertSameOutputs(plain.out, capped.out);
    assert.deepEqual(blocks(r1), blocks(r0));

    // Stopped after block 1 (streamed runs keep no activations unit), the resume replays blocks
    // 0 and 1 and still ends with the same bytes; the resume runs without the cap (the cap is not
    // a setting that invalidates finished units).
    const again = {
      ...capped,
      out: `${dir}/resumed/out`,
      work: `${dir}/resumed/work`,
    };
    const stopAt = new StopAfterBlock(1);
    const control = new StopControl(stopAt);
    try {
      await assert.rejects(compress(again, stopAt, control), StopRun);
    } finally {
      control.close();
    }
    await assert.rejects(Deno.stat(`${again.work}/finetune/streams`), Deno.errors.NotFound);
    const r2 = await compress({ ...again, finetune: plain.finetune }, new Notes());
    await assertSameOutputs(plain.out, again.out);
    assert.deepEqual(blocks(r2), blocks(r0));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
