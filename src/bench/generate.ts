// Generation throughput of a model folder in two forms: the compressed folder run by the
// codebook kernels, and the same weights decoded to dense f32 (what `export --dequantize
// --dtype f32` writes). Prefill and decode tokens/s, time to first token, weight bytes on the GPU
// and weight bytes read per generated token.
import type { Gpu } from "../gpu/device.ts";
import { Tokenizer } from "../io/tokenizer.ts";
import { openModel } from "../format/open.ts";
import { generate, Runner } from "../model/runner.ts";
import { decodedView, type WeightSource } from "../model/weights.ts";
import { compress } from "../pipeline/compress.ts";
import { Progress } from "../util/progress.ts";

/** Compresses `model` (no finetuning, ~2 bits: d 4, n 256) into a temporary folder. */
export async function benchFolder(model: string, iters: number): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-bench-gen-" });
  await compress({
    model,
    out: `${dir}/out`,
    work: `${dir}/work`,
    method: "cluscomp",
    cluster: {
      d: 4,
      n: 256,
      overrides: {},
      splits: 1,
      codebookDtype: "f16",
      iters,
      seed: 0,
      init: "random",
      restarts: 1,
    },
    rtn: { bits: 4, group: 128 },
    gpuBudget: 2 ** 31,
  }, new Progress(true));
  return `${dir}/out`;
}

export async function benchGenerate(
  gpu: Gpu,
  folder: string,
  text: string,
  promptTokens: number,
  newTokens: number,
): Promise<Record<string, unknown>[]> {
  const { cfg, source, index } = await openModel(folder);
  const tok = await Tokenizer.load(folder);
  const prompt = tok.encode((await Deno.readTextFile(text)).slice(0, 20_000)).subarray(
    0,
    Math.min(promptTokens, cfg.maxPositions - newTokens),
  );
  const rows: Record<string, unknown>[] = [];
  const forms: [string, WeightSource][] = [["compressed", source], [
    "dense",
    decodedView(source),
  ]];
  try {
    for (const [form, src] of forms) {
      const runner = await Runner.create(gpu, cfg, src);
      try {
        const opts = { maxNewTokens: newTokens, temperature: 0, topK: 0, topP: 1, seed: 0 };
        // Warm-up compiles every pipeline; the second run is timed.
        await generate(runner, prompt, { ...opts, maxNewTokens: 2, eosId: null });
        const r = await generate(runner, prompt, { ...opts, eosId: null });
        const embedBytes = cfg.vocab * cfg.hidden * 4;
        // A decode step reads every block, the final norm and the head (one embedding row aside).
        const perToken = runner.weightBytes - (cfg.tieEmbeddings ? 0 : embedBytes) +
          cfg.hidden * 4;
        rows.push({
          name: "generate",
          model: folder.split("/").slice(-2).join("/"),
          form,
          prompt_tokens: prompt.length,
          new_tokens: r.ids.length,
          prefill_tokens_per_s: r.prefillTokensPerS,
          decode_tokens_per_s: r.decodeTokensPerS,
          ttft_ms: r.ttftMs,
          weight_bytes: runner.weightBytes,
          weight_bytes_read_per_token: perToken,
        });
      } finally {
        runner.release();
      }
    }
  } finally {
    index.close();
  }
  return rows;
}
