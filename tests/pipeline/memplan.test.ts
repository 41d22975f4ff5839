// The memory plan against the peak GPU bytes the stages actually hold, on both fixtures.
import { getGpu } from "../../src/gpu/device.ts";
import { loadConfig } from "../../src/io/config.ts";
import { compress } from "../../src/pipeline/compress.ts";
import { planMemory } from "../../src/pipeline/memplan.ts";
import { Progress } from "../../src/pipeline/progress.ts";
import { HAS_SHARED, STORIES, TINYLLAMA, TINYSTORIES, WIKI } from "../shared.ts";

for (const model of [STORIES, TINYLLAMA]) {
  const name = model.split("/").pop();
  Deno.test({
    name: `${name}: planned GPU peak per stage is within 10% of the measured peak`,
    ignore: !HAS_SHARED,
    fn: async () => {
      const gpu = await getGpu();
      const cfg = await loadConfig(model);
      const dir = await Deno.makeTempDir({ prefix: "cluscomp-memplan-" });
      const [d, n, samples, seqlen, evalSeqlen, windows] = [4, 256, 16, 64, 128, 8];
      const r = await compress({
        model,
        out: `${dir}/out`,
        work: `${dir}/work`,
        method: "cluscomp",
        cluster: {
          d,
          n,
          overrides: {},
          splits: 1,
          codebookDtype: "f16",
          iters: 3,
          seed: 0,
          init: "random",
          restarts: 1,
        },
        rtn: { bits: 4, group: 128 },
        finetune: {
          calib: TINYSTORIES,
          samples,
          seqlen,
          holdout: 0.1,
          train: { epochs: 1, lr: 1e-4, weightDecay: 0.1, patience: 2, extraTerm: false, seed: 0 },
        },
        eval: { text: WIKI, seqlen: evalSeqlen, maxWindows: windows },
        gpuBudget: 2 ** 31,
      }, new Progress(true));
      const plan = planMemory(cfg, {
        d,
        n,
        splits: 1,
        calibSamples: samples,
        calibSeqlen: seqlen,
        evalSeqlen,
        evalTokens: windows * evalSeqlen,
        gpuMemory: 2 ** 31,
        maxBinding: gpu.limits.maxBinding,
        finetune: true,
        extraTerm: false,
      });
      const rows: string[] = [];
      let bad = "";
      for (const stage of ["cluster", "finetune", "eval"]) {
        const planned = plan.find((p) => p.stage === stage)!.gpu_bytes;
        const measured = r.gpu_peak[stage];
        const err = Math.abs(planned - measured) / measured;
        rows.push(`${stage}: planned ${planned} measured ${measured} (${(100 * err).toFixed(1)}%)`);
        if (!(err <= 0.1)) bad += `${stage} off by ${(100 * err).toFixed(1)}%; `;
      }
      console.log(`${name}\n  ${rows.join("\n  ")}`);
      await Deno.remove(dir, { recursive: true });
      if (bad) throw new Error(`${name}: ${bad}\n${rows.join("\n")}`);
    },
  });
}
