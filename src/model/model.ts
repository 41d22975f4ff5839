// The whole Llama model on the GPU: embeddings, streamed decoder blocks, final norm, LM head
// and the per-token NLL. Blocks stay resident while they fit the memory budget; otherwise
// each superbatch of windows streams them in again, one block at a time.
import type { Gpu } from "../gpu/device.ts";
import { Tensor } from "../gpu/tensor.ts";
import { rowChunks } from "../gpu/tensor.ts";
import { type ModelConfig, ropeInvFreq } from "../io/config.ts";
import { checkIds, embed } from "../kernels/embedding.ts";
import { nll } from "../kernels/loss.ts";
import { matmul } from "../kernels/matmul.ts";
import { rmsnorm } from "../kernels/norm.ts";
import { ropeTables } from "../kernels/rope.ts";
import {
  blockBytes,
  BlockScratch,
  type BlockWeights,
  forwardBlock,
  releaseBlock,
  uploadBlock,
  uploadedBlockBytes,
} from "./block.ts";
import type { WeightSource } from "./weights.ts";

export interface NllOptions {
  /** Called after each batch of windows with the count done so far. */
  onProgress?: (windowsDone: number, windowsTotal: number) => void;
  /** Keep the logits [T, vocab] of the first window. */
  keepFirstLogits?: boolean;
  /** Called with the residual stream of the first batch after the embedding (-1) and each layer. */
  onHidden?: (layer: number, x: Tensor, scratch: BlockScratch) => Promise<void>;
}

export interface NllResult {
  /** Sum of per-token NLL in f64, over every predicted position of every window. */
  sumNll: number;
  tokens: number;
  windows: number;
  firstLogits?: Float32Array;
}

export interface ModelOptions {
  /** GPU bytes the model may hold for blocks and activations (default 2 GiB). */
  gpuBudget?: number;
}

/**
 * How evaluation sizes its GPU work, shared with the memory plan: windows per batch (every
 * activation of a batch fits one binding; 8k tokens is plenty for fast matmuls), whether all
 * blocks stay resident in the budget, batches per superbatch (what the activations may use after
 * one or all blocks), logit rows per chunk, and the bytes this holds. `perBlock` is one block's
 * GPU bytes (dense by default; a compressed block holds its packed codes and codebooks).
 */
export function evalPlan(
  cfg: ModelConfig,
  seqlen: number,
  windows: number,
  budget: number,
  maxBinding: number,
  perBlock = blockBytes(cfg),
): { B: number; resident: boolean; perSuper: number; logitRows: number; bytes: number } {
  const widest = Math.max(cfg.hidden, cfg.heads * cfg.headDim);
  const byBinding = Math.floor(maxBinding / 4 / (widest * seqlen));
  const B = Math.min(windows, Math.max(1, Math.min(byBinding, Math.floor(8192 / seqlen))));
  const actBytes = cfg.hidden * B * seqlen * 4;
  const fixed = 2 * cfg.vocab * cfg.hidden * 4 + BlockScratch.bytes(cfg, B, seqlen, maxBinding);
  const resident = fixed + cfg.layers * perBlock + actBytes <= budget;
  const room = budget - fixed - (resident ? cfg.layers : 1) * perBlock;
  const batches = Math.ceil(windows / B);
  const perSuper = Math.max(1, Math.min(batches, Math.floor(room / actBytes)));
  const logitRows = Math.max(1, Math.min(B * seqlen, Math.floor(maxBinding / 4 / cfg.vocab)));
  const buf = (n: number) => Math.max(16, Math.ceil(n / 4) * 4);
  const bytes = fixed + buf(cfg.hidden * 4) + (resident ? cfg.layers : 1) * perBlock +
    perSuper * actBytes + 3 * buf(B * seqlen * 4) + buf(logitRows * cfg.vocab * 4);
  return { B, resident, perSuper, logitRows, bytes };
}

export class LlamaModel {
  private blocks = new Map<number, BlockWeights>();
  private constructor(
    readonly gpu: Gpu,
    readonly cfg: ModelConfig,
    readonly src: WeightSource,
    readonly embedding: Tensor,
    readonly lmHeadT: Tensor,
    readonly finalNorm: Tensor,
    readonly budget: number,
  ) {}

  static async create(
    gpu: Gpu,
    cfg: ModelConfig,
    src: WeightSource,
    opts: ModelOptions = {},
  ): Promise<LlamaModel> {
    const emb = await Tensor.from(
      gpu,
      await src.tensor("model.embed_tokens.weight"),
      [cfg.vocab, cfg.hidden],
      "embed_tokens",
    );
    const head = await Tensor.from(gpu, await src.lmHeadT(), [cfg.hidden, cfg.vocab], "lm_head^T");
    const norm = await Tensor.from(
      gpu,
      await src.tensor("model.norm.weight"),
      [cfg.hidden],
      "norm",
    );
    return new LlamaModel(gpu, cfg, src, emb, head, norm, opts.gpuBudget ?? 2 ** 31);
  }

  release(): void {
    for (const b of this.blocks.values()) releaseBlock(b);
    this.blocks.clear();
    this.embedding.release();
    this.lmHeadT.release();
    this.finalNorm.release();
  }

  /** Mean-NLL bookkeeping over GPTQ windows (each of the same length). */
  async nll(windows: Int32Array[], opts: NllOptions = {}): Promise<NllResult> {
    const gpu = this.gpu, cfg = this.cfg;
    if (windows.length === 0) return { sumNll: 0, tokens: 0, windows: 0 };
    const T = windows[0].length;
    for (const w of windows) {
      if (w.length !== T) throw new Error("all windows must have the same length");
      checkIds(w, cfg.vocab);
    }
    // Block 0 first: its size on the GPU (dense or codebooks) sizes the plan.
    const perBlock = uploadedBlockBytes(await this.block(0));
    const { B, resident: allResident, perSuper, logitRows } = evalPlan(
      cfg,
      T,
      windows.length,
      this.budget,
      gpu.limits.maxBinding,
      perBlock,
    );
    const scratch = await BlockScratch.create(gpu, cfg, B, T, ropeTables(ropeInvFreq(cfg), T));
    const batches: Int32Array[][] = [];
    for (let i = 0; i < windows.length; i += B) batches.push(windows.slice(i, i + B));

    let sumNll = 0, tokens = 0, done = 0;
    let firstLogits: Float32Array | undefined;
    const ids = Tensor.empty(gpu, [B * T], "ids", "u32");
    const targets = Tensor.empty(gpu, [B * T], "targets", "u32");
    const nllOut = Tensor.empty(gpu, [B * T], "nll");
    const logits = Tensor.empty(gpu, [logitRows, cfg.vocab], "logits");
    try {
      for (let s0 = 0; s0 < batches.length; s0 += perSuper) {
        const group = batches.slice(s0, s0 + perSuper);
        const acts: Tensor[] = [];
        for (const batch of group) {
          const x = Tensor.empty(gpu, [cfg.hidden, B * T], "x");
          await gpu.write(ids.buffer, packIds(batch, B, T));
          this.embedAll(ids, x, B * T);
          acts.push(x);
        }
        const first = s0 === 0 && opts.onHidden;
        if (first) await opts.onHidden!(-1, acts[0], scratch);
        for (let l = 0; l < cfg.layers; l++) {
          const block = await this.block(l);
          for (const x of acts) forwardBlock(gpu, block, x, scratch);
          if (!allResident) {
            await gpu.sync();
            releaseBlock(block);
            this.blocks.delete(l);
          }
          if (first) await opts.onHidden!(l, acts[0], scratch);
        }
        for (let i = 0; i < group.length; i++) {
          const batch = group[i], x = acts[i];
          await gpu.write(targets.buffer, packTargets(batch, B, T));
          rmsnorm(gpu, x.all, this.finalNorm.all, scratch.h.all, cfg.hidden, B * T, cfg.rmsNormEps);
          if (first && i === 0) await opts.onHidden!(cfg.layers, scratch.h, scratch);
          const n = batch.length * T;
          for (const c of rowChunks(n, cfg.vocab * 4, gpu.limits.maxBinding, gpu.limits.align)) {
            // logits [rows, vocab] = h[:, rows]^T lm_head^T
            matmul(gpu, {
              M: c.rows,
              N: cfg.vocab,
              K: cfg.hidden,
              a: scratch.h.buffer,
              aOffset: c.row0,
              lda: B * T,
              b: this.lmHeadT.buffer,
              ldb: cfg.vocab,
              c: logits.buffer,
              ldc: cfg.vocab,
            });
            if (opts.keepFirstLogits && !firstLogits && s0 === 0 && i === 0 && c.row0 === 0) {
              firstLogits = new Float32Array(
                await gpu.read(logits.buffer, 0, Math.min(T, c.rows) * cfg.vocab * 4),
              );
            }
            nll(gpu, logits.all, targets.all, nllOut.all, c.rows, cfg.vocab, c.row0);
          }
          const values = new Float32Array(await gpu.read(nllOut.buffer, 0, n * 4));
          for (let w = 0; w < batch.length; w++) {
            for (let t = 0; t < T - 1; t++) sumNll += values[w * T + t];
          }
          tokens += batch.length * (T - 1);
          done += batch.length;
          opts.onProgress?.(done, windows.length);
        }
        for (const x of acts) x.release();
      }
    } finally {
      ids.release();
      targets.release();
      nllOut.release();
      logits.release();
      scratch.release();
    }
    return { sumNll, tokens, windows: windows.length, firstLogits };
  }

  private embedAll(ids: Tensor, x: Tensor, n: number): void {
    embedTokens(this.gpu, this.cfg, this.embedding, ids, x, n);
  }

  /** Block l's weights, uploaded unless resident. */
  private async block(l: number): Promise<BlockWeights> {
    let b = this.blocks.get(l);
    if (!b) {
      b = await uploadBlock(this.gpu, this.cfg, this.src, l);
      this.blocks.set(l, b);
    }
    return b;
  }
}

/** x^T [hidden, n] <- the embedding rows of ids [n], the table bound in row chunks. */
/**
 * Feature-major [H, T] embeddings of one window, gathered on the host from the [vocab, H] table
 * (the stages that stream block inputs: finetune, stats).
 */
export function embedWindow(table: Float32Array, ids: Int32Array, H: number): Float32Array {
  const T = ids.length, x = new Float32Array(H * T);
  for (let t = 0; t < T; t++) {
    const row = ids[t] * H;
    for (let h = 0; h < H; h++) x[h * T + t] = table[row + h];
  }
  return x;
}

export function embedTokens(
  gpu: Gpu,
  cfg: ModelConfig,
  table: Tensor,
  ids: Tensor,
  x: Tensor,
  n: number,
): void {
  const { maxBinding, align } = gpu.limits;
  for (const c of rowChunks(cfg.vocab, cfg.hidden * 4, maxBinding, align)) {
    embed(gpu, table.rows(c.row0, c.rows), ids.all, x.all, c.rows, cfg.hidden, n, c.row0);
  }
}

function packIds(batch: Int32Array[], B: number, T: number): Uint32Array {
  const out = new Uint32Array(B * T);
  batch.forEach((w, i) => out.set(w, i * T));
  return out;
}

/** targets[t] = next token; the last position of each window (and padding) predicts nothing. */
function packTargets(batch: Int32Array[], B: number, T: number): Uint32Array {
  const out = new Uint32Array(B * T).fill(0xffffffff);
  batch.forEach((w, i) => out.set(w.subarray(1), i * T));
  return out;
}
