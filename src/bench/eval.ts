// Eval throughput on a model folder: tokens per second of the whole-model forward + NLL.
import { evaluatePerplexity } from "../eval/perplexity.ts";

export async function benchEval(
  model: string,
  text: string,
  seqlen: number,
  windows: number,
): Promise<Record<string, unknown>> {
  // First run compiles pipelines; the second is timed.
  await evaluatePerplexity({ model, text, seqlen, maxWindows: 1 });
  const r = await evaluatePerplexity({ model, text, seqlen, maxWindows: windows });
  return {
    name: "eval",
    model: model.split("/").pop(),
    shapes: `${windows} windows x ${seqlen}`,
    median_ms: r.seconds * 1000,
    tokens_per_s: r.tokens_per_s,
    ppl: r.ppl,
    gpu_peak_bytes: r.gpu_peak_bytes,
  };
}
