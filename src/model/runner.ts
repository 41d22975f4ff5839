// The model on the GPU for generation: every block resident in the form its folder holds it
// (codebooks stay packed codes + codebooks), a KV cache per layer, the prompt prefilled in one
// pass per chunk of up to `prefillChunk` tokens, then one token at a time. Only the last
// position's logits are computed and read back.
import type { Gpu } from "../gpu/device.ts";
import { Tensor } from "../gpu/tensor.ts";
import { type ModelConfig, ropeInvFreq } from "../io/config.ts";
import { checkIds } from "../kernels/embedding.ts";
import { rowsMatvec } from "../kernels/matvec.ts";
import { rmsnorm } from "../kernels/norm.ts";
import { rope, ropeTables } from "../kernels/rope.ts";
import { Rng } from "../util/rng.ts";
import {
  attend,
  BlockScratch,
  type BlockWeights,
  outputAndMlp,
  projectQkv,
  releaseBlock,
  uploadBlock,
} from "./block.ts";
import { embedTokens } from "./model.ts";
import { sampleToken } from "./sample.ts";
import type { WeightSource } from "./weights.ts";

export interface RunnerOptions {
  /** Tokens the KV cache holds (default and most: max_position_embeddings). */
  maxContext?: number;
  /** Most tokens one prefill pass takes (default 256). */
  prefillChunk?: number;
}

interface LayerCache {
  /** K^T [kvDim, context] feature-major, rotated. */
  k: Tensor;
  /** V [context, kvDim] token-major. */
  v: Tensor;
}

export class Runner {
  /** Tokens in the cache. */
  position = 0;
  private released = false;

  private constructor(
    readonly gpu: Gpu,
    readonly cfg: ModelConfig,
    readonly maxContext: number,
    readonly prefillChunk: number,
    /** GPU bytes held by the weights (the allocator's count across their upload). */
    readonly weightBytes: number,
    private readonly embedding: Tensor,
    /** W [vocab, hidden] row-major: the embedding itself when tied. */
    private readonly head: Tensor,
    private readonly finalNorm: Tensor,
    private readonly blocks: BlockWeights[],
    private readonly cache: LayerCache[],
    private readonly scratch: BlockScratch,
    /** Scores S^T [headGroup, context, prefillChunk]. */
    private readonly scores: Tensor,
    private readonly headGroup: number,
    private readonly x: Tensor,
    private readonly ids: Tensor,
    private readonly logits: Tensor,
  ) {}

  static async create(
    gpu: Gpu,
    cfg: ModelConfig,
    src: WeightSource,
    opts: RunnerOptions = {},
  ): Promise<Runner> {
    const ctx = Math.min(opts.maxContext ?? cfg.maxPositions, cfg.maxPositions);
    if (!(Number.isInteger(ctx) && ctx >= 1)) {
      throw new Error(`Runner: context ${opts.maxContext} must be a positive integer`);
    }
    const chunk = Math.min(ctx, opts.prefillChunk ?? 256);
    const H = cfg.hidden, kvDim = cfg.kvHeads * cfg.headDim;
    const before = gpu.bytesLive;
    const embedding = await Tensor.from(
      gpu,
      await src.tensor("model.embed_tokens.weight"),
      [cfg.vocab, H],
      "embed_tokens",
    );
    const head = cfg.tieEmbeddings
      ? embedding
      : await Tensor.from(gpu, await src.tensor("lm_head.weight"), [cfg.vocab, H], "lm_head");
    const finalNorm = await Tensor.from(gpu, await src.tensor("model.norm.weight"), [H], "norm");
    const blocks: BlockWeights[] = [];
    for (let l = 0; l < cfg.layers; l++) blocks.push(await uploadBlock(gpu, cfg, src, l));
    const weightBytes = gpu.bytesLive - before;

    const cache = blocks.map((_, l) => ({
      k: Tensor.empty(gpu, [kvDim, ctx], `L${l}.k_cache`),
      v: Tensor.empty(gpu, [ctx, kvDim], `L${l}.v_cache`),
    }));
    const scratch = await BlockScratch.create(gpu, cfg, 1, chunk, ropeTables(ropeInvFreq(cfg), 1));
    const headGroup = Runner.headGroup(cfg, ctx, chunk, gpu.limits.maxBinding);
    return new Runner(
      gpu,
      cfg,
      ctx,
      chunk,
      weightBytes,
      embedding,
      head,
      finalNorm,
      blocks,
      cache,
      scratch,
      Tensor.empty(gpu, [headGroup, ctx, chunk], "scores"),
      headGroup,
      Tensor.empty(gpu, [H, chunk], "x"),
      Tensor.empty(gpu, [chunk], "ids", "u32"),
      Tensor.empty(gpu, [cfg.vocab], "logits"),
    );
  }

  /** Heads per score pass, so that [heads, context, chunk] fits one binding. */
  static headGroup(cfg: ModelConfig, ctx: number, chunk: number, maxBinding: number): number {
    return Math.max(1, Math.min(cfg.heads, Math.floor(maxBinding / 4 / (ctx * chunk))));
  }

  /**
   * GPU bytes besides the weights for a context and prefill chunk (default as create() picks):
   * KV cache, block scratch, scores, and the small per-pass buffers (used by the memory plan).
   */
  static scratchBytes(
    cfg: ModelConfig,
    maxBinding: number,
    context = cfg.maxPositions,
    prefillChunk = 256,
  ): { kvCache: number; scratch: number } {
    const ctx = context, chunk = Math.min(ctx, prefillChunk);
    const buf = (bytes: number) => Math.max(16, Math.ceil(bytes / 4) * 4);
    const kvDim = cfg.kvHeads * cfg.headDim;
    const headGroup = Runner.headGroup(cfg, ctx, chunk, maxBinding);
    return {
      kvCache: cfg.layers * 2 * buf(kvDim * ctx * 4),
      scratch: BlockScratch.bytes(cfg, 1, chunk, maxBinding) + buf(headGroup * ctx * chunk * 4) +
        buf(cfg.hidden * chunk * 4) + buf(chunk * 4) +
        buf(cfg.vocab * 4),
    };
  }

  /** Forgets the cached tokens. */
  reset(): void {
    this.position = 0;
  }

  /** Appends tokens to the cache and returns the logits [vocab] after the last one. */
  async feed(ids: ArrayLike<number>): Promise<Float32Array> {
    if (this.released) throw new Error("Runner: used after release()");
    if (ids.length === 0) throw new Error("Runner.feed: no tokens");
    if (this.position + ids.length > this.maxContext) {
      throw new Error(
        `Runner.feed: ${this.position} cached + ${ids.length} new tokens exceed the context of ` +
          `${this.maxContext}`,
      );
    }
    checkIds(ids, this.cfg.vocab);
    const all = Int32Array.from(ids as ArrayLike<number>);
    for (let t0 = 0; t0 < all.length; t0 += this.prefillChunk) {
      await this.pass(all.subarray(t0, Math.min(all.length, t0 + this.prefillChunk)));
    }
    return new Float32Array(await this.gpu.read(this.logits.buffer, 0, this.cfg.vocab * 4));
  }

  /** One pass over n <= prefillChunk new tokens at positions position .. position + n - 1. */
  private async pass(ids: Int32Array): Promise<void> {
    const gpu = this.gpu, cfg = this.cfg, n = ids.length, p0 = this.position;
    const s = this.scratch, x = this.x, H = cfg.hidden;
    const table = ropeTables(ropeInvFreq(cfg), n, p0);
    await gpu.write(this.ids.buffer, Uint32Array.from(ids));
    // The scratch's rope tables [chunk, half] hold this pass's positions.
    await gpu.write(s.cos.buffer, table.cos);
    await gpu.write(s.sin.buffer, table.sin);
    embedTokens(gpu, cfg, this.embedding, this.ids, x, n);
    for (let l = 0; l < cfg.layers; l++) this.block(l, n, p0);
    this.position += n;
    // Logits of the last token: rmsnorm of its column, then W [vocab, H] times it.
    rmsnorm(gpu, x.all, this.finalNorm.all, s.h.all, H, n, cfg.rmsNormEps);
    rowsMatvec(gpu, this.head.buffer, cfg.vocab, H, {
      N: 1,
      x: s.h.buffer,
      xOffset: n - 1,
      ldx: n,
      y: this.logits.buffer,
      yRow: 1,
      yCol: cfg.vocab,
    });
    await gpu.flush();
  }

  /** Block l on the n new tokens in x, their K and V appended to the cache. */
  private block(l: number, n: number, p0: number): void {
    const gpu = this.gpu, cfg = this.cfg, s = this.scratch, b = this.blocks[l];
    const { k, v } = this.cache[l];
    const ctx = this.maxContext, hd = cfg.headDim, kvDim = cfg.kvHeads * hd;
    rmsnorm(gpu, this.x.all, b.inputNorm.all, s.h.all, cfg.hidden, n, cfg.rmsNormEps);
    projectQkv(gpu, b, cfg, s.h.buffer, n, s.q.buffer, { buffer: k.buffer, offset: p0, ld: ctx }, {
      buffer: v.buffer,
      offset: p0 * kvDim,
    });
    rope(gpu, s.q.all, s.cos.all, s.sin.all, cfg.heads, hd, n);
    rope(gpu, k.all, s.cos.all, s.sin.all, cfg.kvHeads, hd, n, { ld: ctx, col0: p0 });
    attend(gpu, cfg, {
      q: s.q.buffer,
      ldq: n,
      qCol: 0,
      k: k.buffer,
      ldk: ctx,
      kCol: 0,
      v: v.buffer,
      vRow: 0,
      o: s.o.buffer,
      scores: this.scores.buffer,
      headGroup: this.headGroup,
      keys: p0 + n,
      queries: n,
      q0: p0,
    });
    outputAndMlp(gpu, b, this.x, s, n);
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    for (const b of this.blocks) releaseBlock(b);
    for (const c of this.cache) {
      c.k.release();
      c.v.release();
    }
    if (this.head !== this.embedding) this.head.release();
    for (
      const t of [
        this.embedding,
        this.finalNorm,
        this.scores,
        this.x,
        this.ids,
        this.logits,
      ]
    ) t.release();
    this.scratch.release();
  }
}

export interface GenerateOptions {
  maxNewTokens: number;
  /** 0 = greedy. */
  temperature: number;
  /** 0 = off. */
  topK: number;
  /** 1 = off. */
  topP: number;
  seed: number;
  eosId: number | null;
  /** Called with each new token id as it is produced; return true to stop (a stop string). */
  onToken?: (id: number) => boolean | void;
}

export interface GenerateResult {
  /** Generated ids: a stop-string token included, EOS not. */
  ids: number[];
  promptTokens: number;
  stopReason: "eos" | "length" | "stop" | "context";
  ttftMs: number;
  prefillTokensPerS: number;
  /** Tokens after the first over the time after the first. */
  decodeTokensPerS: number;
}

/** Prefills `prompt` (from an empty cache) and samples up to maxNewTokens tokens. */
export async function generate(
  runner: Runner,
  prompt: ArrayLike<number>,
  opts: GenerateOptions,
): Promise<GenerateResult> {
  if (prompt.length === 0) throw new Error("generate: empty prompt");
  if (!(Number.isInteger(opts.maxNewTokens) && opts.maxNewTokens >= 1)) {
    throw new Error(`generate: maxNewTokens ${opts.maxNewTokens} must be a positive integer`);
  }
  runner.reset();
  const rng = new Rng(opts.seed);
  const t0 = performance.now();
  let logits = await runner.feed(prompt);
  const tPrefill = performance.now();
  let tFirst = tPrefill;
  const ids: number[] = [];
  let stopReason: GenerateResult["stopReason"] = "length";
  while (true) {
    const id = sampleToken(logits, opts, rng);
    if (ids.length === 0) tFirst = performance.now();
    if (opts.eosId !== null && id === opts.eosId) {
      stopReason = "eos";
      break;
    }
    ids.push(id);
    if (opts.onToken?.(id) === true) {
      stopReason = "stop";
      break;
    }
    if (ids.length >= opts.maxNewTokens) break;
    if (runner.position >= runner.maxContext) {
      stopReason = "context";
      break;
    }
    logits = await runner.feed([id]);
  }
  const tEnd = performance.now();
  const decodeSeconds = (tEnd - tFirst) / 1000;
  return {
    ids,
    promptTokens: prompt.length,
    stopReason,
    ttftMs: tFirst - t0,
    prefillTokensPerS: prompt.length / Math.max(1e-9, (tPrefill - t0) / 1000),
    decodeTokensPerS: ids.length > 1 ? (ids.length - 1) / Math.max(1e-9, decodeSeconds) : 0,
  };
}
