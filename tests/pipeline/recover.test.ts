// compress --recover on the embedded kjv-llama at about 1.5 bits: whole-model distillation from
// the original lowers the held-out NLL of the block-wise finetuned model and changes only its
// codebooks; with a learning rate of 0 (a test of the test) the folder equals the one without
// recovery.
import assert from "node:assert/strict";
import { compress, type CompressSettings } from "../../src/pipeline/compress.ts";
import { Progress } from "../../src/util/progress.ts";
import { KJV, quickSettings } from "../settings.ts";
import { changedTensors, folderTensors } from "../util.ts";

function recoverSettings(dir: string, lr: number): CompressSettings {
  const s = quickSettings(KJV, dir, { bits: 1.5 }, { finetune: true });
  return {
    ...s,
    recover: {
      data: `${KJV}/calib.txt`,
      format: "text",
      holdout: 8,
      topk: 16,
      temperature: 1,
      steps: 8,
      epochs: 1,
      train: {
        seqlen: 64,
        batch: 4,
        lr,
        warmup: 0,
        schedule: "linear",
        weightDecay: 0,
        evalEvery: 4,
        trainNorms: false,
        trainHead: false,
        kdWeight: 1,
        seed: 0,
      },
      gpuBudget: 2 ** 31,
    },
  };
}

Deno.test("compress --recover: distillation lowers the held-out NLL and changes only codebooks", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-recover-" });
  const plain = await compress(
    quickSettings(KJV, `${dir}/plain`, { bits: 1.5 }, { finetune: true }),
    new Progress(true),
  );
  const r = await compress(recoverSettings(`${dir}/rec`, 3e-3), new Progress(true));
  const rep = r.recover!.report;
  console.log(
    `recover: initial ${rep.initialNll}, evals ${rep.evals.map((e) => e.nll).join(", ")}`,
  );
  assert.ok(rep.bestNll < rep.initialNll, "distillation must lower the held-out NLL");
  assert.ok(rep.bestStep > 0);
  const a = await folderTensors(plain.out);
  const diff = changedTensors(a, await folderTensors(r.out));
  assert.ok(diff.length > 0 && diff.every((k) => k.endsWith(".codebook")), diff.join(", "));
  // Test of the test: nothing learned, nothing changed.
  const r0 = await compress(recoverSettings(`${dir}/rec0`, 0), new Progress(true));
  assert.equal(r0.recover!.report.bestStep, 0);
  assert.deepEqual(changedTensors(a, await folderTensors(r0.out)), []);
  await Deno.remove(dir, { recursive: true });
});
