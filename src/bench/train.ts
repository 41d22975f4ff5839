// Whole-model codebook training throughput: optimizer steps of `batch` windows of T tokens on a
// ~2-bit compressed folder (forward, recomputed backward down to the codebooks, AdamW), and the
// dense trainer on the same model and windows for the ratio.
import type { Gpu } from "../gpu/device.ts";
import { loadConfig } from "../io/config.ts";
import { Tokenizer } from "../io/tokenizer.ts";
import { CodebookTrainer } from "../train/codebook_trainer.ts";
import { loadTrainData } from "../train/data.ts";
import { Trainer } from "../train/trainer.ts";
import { openModel } from "../format/open.ts";

export async function benchTrain(
  gpu: Gpu,
  dense: string,
  folder: string,
  text: string,
  T: number,
  batch: number,
  steps: number,
): Promise<Record<string, unknown>> {
  const tok = await Tokenizer.load(folder);
  const { windows } = await loadTrainData(text, tok, { seqlen: T, format: "text" });
  const pick = (k: number) =>
    Array.from({ length: batch }, (_, i) => windows[(k * batch + i) % windows.length]);
  const time = async (step: (k: number) => Promise<unknown>) => {
    await step(0); // pipeline compilation
    const t0 = performance.now();
    for (let k = 1; k <= steps; k++) await step(k);
    await gpu.sync();
    return (performance.now() - t0) / 1000;
  };
  const cb = await CodebookTrainer.fromFolder(gpu, folder, { seqlen: T });
  const seconds = await time((k) => cb.step(pick(k), 1e-4));
  cb.release();
  const row: Record<string, unknown> = {
    bench: "train",
    model: dense.split("/").pop(),
    seqlen: T,
    batch,
    steps,
    tokens_per_s: (steps * batch * T) / seconds,
    step_ms: (1000 * seconds) / steps,
  };
  const cfg = await loadConfig(dense);
  if (!cfg.tieEmbeddings) {
    const m = await openModel(dense);
    const weights = new Map<string, Float32Array>();
    for (const name of m.index.names()) weights.set(name, await m.source.tensor(name));
    m.index.close();
    const tr = await Trainer.fromWeights(gpu, cfg, { seqlen: T, seed: 0 }, weights);
    const denseSeconds = await time((k) => tr.step(pick(k).map((w) => w.ids), 1e-4));
    tr.release();
    row.dense_tokens_per_s = (steps * batch * T) / denseSeconds;
    row.codebook_vs_dense = denseSeconds / seconds;
  }
  return row;
}
