// Block-wise finetuning with the default learning-rate rule and calibration size never raises a
// block's held-out MSE, and lowers the wiki perplexity wherever the clustered model is worse
// than its full-precision teacher on wiki (stories260K). tinyllama's clustered model already
// scores at or below its teacher on wiki (out of its domain), so reconstruction toward the teacher
// has no wiki headroom there: its numbers are printed (see the issue note). Epochs are cut to 3
// (default 20 with early stopping) to keep CI short. The second run reuses the first run's cluster
// units through --restart finetune.
import assert from "node:assert/strict";
import { defaultCalib, defaultLr } from "../../src/finetune/calib.ts";
import { loadConfig } from "../../src/io/config.ts";
import { compress, type CompressSettings } from "../../src/pipeline/compress.ts";
import { Progress } from "../../src/pipeline/progress.ts";
import { HAS_SHARED, STORIES, TINYLLAMA, TINYSTORIES, WIKI } from "../shared.ts";

for (const model of [STORIES, TINYLLAMA]) {
  const name = model.split("/").pop();
  Deno.test({
    name:
      `${name}: default finetuning never raises held-out block MSE and lowers wiki ppl with headroom`,
    ignore: !HAS_SHARED,
    fn: async () => {
      const cfg = await loadConfig(model);
      const calib = defaultCalib(cfg);
      const dir = await Deno.makeTempDir({ prefix: "cluscomp-ft-" });
      const base: CompressSettings = {
        model,
        out: `${dir}/out`,
        work: `${dir}/work`,
        method: "cluscomp",
        cluster: {
          bits: 3,
          d: 2,
          overrides: {},
          splits: 1,
          codebookDtype: "f16",
          iters: 20,
          seed: 0,
          init: "random",
          restarts: 1,
        },
        rtn: { bits: 4, group: 128 },
        eval: { text: WIKI, seqlen: 128, maxWindows: 64 },
        gpuBudget: 2 ** 31,
      };
      const quiet = new Progress(true);
      const plain = await compress(base, quiet);
      const tuned = await compress({
        ...base,
        restart: "finetune",
        finetune: {
          calib: TINYSTORIES,
          samples: calib.samples,
          seqlen: calib.seqlen,
          holdout: 0.1,
          train: {
            epochs: 3,
            lr: defaultLr(calib.samples, calib.seqlen),
            weightDecay: 0.1,
            patience: 2,
            extraTerm: false,
            seed: 0,
          },
        },
      }, quiet);
      console.log(
        `${name}: ${plain.bits_per_weight.toFixed(3)} bits, wiki ppl original ` +
          `${plain.ppl_original!.toFixed(3)}, clustered ${plain.ppl_compressed!.toFixed(3)}, ` +
          `finetuned ${tuned.ppl_compressed!.toFixed(3)} (finetune ${
            tuned.seconds.finetune.toFixed(0)
          } s)`,
      );
      for (const b of tuned.finetune!.blocks) {
        assert.ok(b.bestMse <= b.initialMse, `block ${b.layer}: held-out mse rose`);
      }
      if (plain.ppl_compressed! > plain.ppl_original! * 1.05) {
        assert.ok(
          tuned.ppl_compressed! < plain.ppl_compressed!,
          "finetuning must lower perplexity",
        );
      }
      await Deno.remove(dir, { recursive: true });
    },
  });
}
