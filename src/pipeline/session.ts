// A model folder (dense or compressed) opened for use from TypeScript: generate text and score
// it in a few lines. Compressed linears stay packed codes + codebooks on the GPU.
import { type EvalResult, evaluatePerplexity } from "../eval/perplexity.ts";
import { getGpu, type Gpu } from "../gpu/device.ts";
import type { ModelConfig } from "../io/config.ts";
import { TextStream } from "../io/detok.ts";
import { Tokenizer } from "../io/tokenizer.ts";
import { type OpenModel, openModel } from "../format/open.ts";
import { generate, type GenerateResult, Runner } from "../model/runner.ts";

export interface GenerateTextOptions {
  /** Default 128. */
  maxNewTokens?: number;
  /** Default 0 (greedy). */
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  /** Called with each piece of text as it is produced. */
  onText?: (text: string) => void;
}

export interface GeneratedText extends GenerateResult {
  text: string;
}

export interface LoadOptions {
  /** KV cache size in tokens (default max_position_embeddings). */
  maxContext?: number;
}

/**
 * ```ts
 * const m = await LoadedModel.load("out/kjv-2bit");
 * console.log((await m.generate("In the beginning", { maxNewTokens: 32 })).text);
 * m.release();
 * ```
 */
export class LoadedModel {
  private constructor(
    readonly dir: string,
    readonly cfg: ModelConfig,
    readonly tokenizer: Tokenizer,
    readonly runner: Runner,
    private readonly model: OpenModel,
    readonly gpu: Gpu,
  ) {}

  static async load(dir: string, opts: LoadOptions = {}): Promise<LoadedModel> {
    const model = await openModel(dir);
    const tokenizer = await Tokenizer.load(dir);
    const gpu = await getGpu();
    const runner = await Runner.create(gpu, model.cfg, model.source, opts);
    return new LoadedModel(dir, model.cfg, tokenizer, runner, model, gpu);
  }

  /** Whether the folder holds a quantization_config (cluscomp or rtn). */
  get compressed(): boolean {
    return this.model.quant !== null;
  }

  /** Generates a continuation of `prompt` (BOS prepended when the tokenizer has one). */
  async generate(prompt: string, opts: GenerateTextOptions = {}): Promise<GeneratedText> {
    const ids = this.tokenizer.encode(prompt, { addBos: true });
    if (ids.length === 0) throw new Error("generate: empty prompt");
    const stream = new TextStream(this.tokenizer, ids);
    let text = "";
    const r = await generate(this.runner, ids, {
      maxNewTokens: opts.maxNewTokens ?? 128,
      temperature: opts.temperature ?? 0,
      topK: opts.topK ?? 0,
      topP: opts.topP ?? 1,
      seed: opts.seed ?? 0,
      eosId: this.tokenizer.eosId,
      onToken: (id) => {
        const piece = stream.push(id);
        text += piece;
        if (piece) opts.onText?.(piece);
      },
    });
    const rest = stream.flush();
    text += rest;
    if (rest) opts.onText?.(rest);
    return { ...r, text };
  }

  /** GPTQ-style perplexity of a text file (see evaluatePerplexity). */
  perplexity(
    textFile: string,
    opts: { seqlen: number; maxWindows?: number },
  ): Promise<EvalResult> {
    return evaluatePerplexity({ model: this.dir, text: textFile, ...opts });
  }

  release(): void {
    this.runner.release();
    this.model.index.close();
  }
}
