// GPTQ-style perplexity: the whole text tokenized once without special tokens, cut into
// floor(n / seqlen) non-overlapping windows, mean NLL over every predicted position.
import { getGpu } from "../gpu/device.ts";
import { gptqWindows, readText } from "../io/text.ts";
import { Tokenizer } from "../io/tokenizer.ts";
import { LlamaModel } from "../model/model.ts";
import { openModel } from "../format/open.ts";
import type { Progress } from "../util/progress.ts";

export interface EvalSettings {
  model: string;
  text: string;
  seqlen: number;
  maxWindows?: number;
  gpuBudget?: number;
  keepFirstLogits?: boolean;
}

export interface EvalResult {
  model: string;
  text: string;
  ppl: number;
  nll: number;
  tokens: number;
  windows: number;
  seqlen: number;
  seconds: number;
  tokens_per_s: number;
  gpu_peak_bytes: number;
  adapter: string;
  firstLogits?: Float32Array;
}

export async function evaluatePerplexity(
  s: EvalSettings,
  progress?: Progress,
): Promise<EvalResult> {
  const { cfg, index, source } = await openModel(s.model);
  const tokenizer = await Tokenizer.load(s.model);
  const text = await readText(s.text);
  const ids = tokenizer.encode(text);
  const windows = gptqWindows(ids, s.seqlen, s.maxWindows);
  const gpu = await getGpu();
  const start = performance.now();
  const model = await LlamaModel.create(gpu, cfg, source, { gpuBudget: s.gpuBudget });
  try {
    const r = await model.nll(windows, {
      keepFirstLogits: s.keepFirstLogits,
      onProgress: (done, total) => progress?.update({ stage: "eval", done, total }),
    });
    const seconds = (performance.now() - start) / 1000;
    const nll = r.sumNll / r.tokens;
    return {
      model: s.model,
      text: s.text,
      ppl: Math.exp(nll),
      nll,
      tokens: r.tokens,
      windows: r.windows,
      seqlen: s.seqlen,
      seconds,
      tokens_per_s: (r.windows * s.seqlen) / seconds,
      gpu_peak_bytes: gpu.bytesPeak,
      adapter: gpu.adapterName,
      firstLogits: r.firstLogits,
    };
  } finally {
    model.release();
    index.close();
  }
}
