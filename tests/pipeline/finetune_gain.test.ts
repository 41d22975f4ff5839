// Block-wise finetuning does something on the embedded fixtures/kjv-llama (no ../shared): at
// about 2 bits every block's held-out MSE after some epoch is strictly below the clustered
// (epoch 0) one, block 0's by at least 10% (it halves with these settings), and the training loss
// falls from the first to the last epoch. Each epoch's training loss is the mean of the losses
// the stage reported while training (every 8th step and the last). The same check on a run with
// no epochs must throw, so it cannot pass by construction. The second run reuses the first
// run's cluster units through --restart finetune.
import assert from "node:assert/strict";
import type { BlockReport } from "../../src/finetune/stage.ts";
import { compress } from "../../src/pipeline/compress.ts";
import { Progress, type ProgressEvent } from "../../src/util/progress.ts";
import { quickSettings } from "../settings.ts";

const KJV = new URL("../../fixtures/kjv-llama", import.meta.url).pathname;

/** Keeps every progress event, prints nothing. */
class Capture extends Progress {
  events: ProgressEvent[] = [];
  constructor() {
    super(true);
  }
  override update(e: ProgressEvent): void {
    this.events.push(e);
  }
}

/** Throws unless finetuning lowered held-out MSE and training loss in every block. */
export function assertFinetuneGain(blocks: BlockReport[], events: ProgressEvent[]): void {
  assert.ok(blocks.length > 0, "no finetuned blocks");
  for (const b of blocks) {
    const best = Math.min(...b.epochMse);
    assert.ok(
      best < b.initialMse,
      `block ${b.layer}: held-out mse ${best} not below the clustered ${b.initialMse}`,
    );
    if (b.layer === 0) {
      assert.ok(best < 0.9 * b.initialMse, `block 0: ${best} vs ${b.initialMse}, under 10% gain`);
    }
    assert.ok(b.trainLoss.length >= 2, `block ${b.layer}: fewer than two epochs`);
    assert.ok(
      b.trainLoss[b.trainLoss.length - 1] < b.trainLoss[0],
      `block ${b.layer}: training loss ${b.trainLoss} did not fall`,
    );
    b.trainLoss.forEach((loss, i) => {
      const logged = events
        .filter((e) =>
          e.stage === "finetune" && e.block === b.layer && e.epoch === i + 1 && "loss" in e
        )
        .map((e) => e.loss as number);
      assert.ok(logged.length > 0, `block ${b.layer} epoch ${i + 1}: no step losses`);
      const mean = logged.reduce((a, v) => a + v, 0) / logged.length;
      assert.ok(
        Math.abs(loss - mean) <= 1e-9 * mean,
        `block ${b.layer} epoch ${i + 1}: train loss ${loss}, mean of the steps ${mean}`,
      );
    });
  }
}

Deno.test("kjv-llama: finetuning lowers held-out block MSE and training loss (and no epochs fails)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-ft-" });
  // 16 windows of 64 tokens, 2 held out: 14 steps an epoch, losses read at steps 1, 9 and 14.
  const base = quickSettings(KJV, dir, { bits: 2, d: 2 }, { finetune: true });
  try {
    const p = new Capture();
    const tuned = await compress(base, p);
    assertFinetuneGain(tuned.finetune!.blocks, p.events);

    // The test of the test: without epochs nothing trains and the check must fail.
    const q = new Capture();
    const none = await compress({
      ...base,
      restart: "finetune",
      finetune: { ...base.finetune!, train: { ...base.finetune!.train, epochs: 0 } },
    }, q);
    assert.throws(() => assertFinetuneGain(none.finetune!.blocks, q.events));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
