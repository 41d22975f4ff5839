// Whole-model training of a compressed (ClusComp) Llama: every linear is a codebook of f32
// centroids with fixed codes, trained on the next-token loss of the whole model (optionally
// mixed with a teacher's top-k distribution for distillation), with AdamW.
//
// Layer-major passes: a batch is processed in passes of at most `batch` windows (the option).
// A pass embeds every window, then runs block 0 over every window, block 1 over every window,
// ..., storing each window's input of each block ([batch, layers] x [H, T]); then the head and
// loss of every window give its dy; then, layer by layer in reverse, every window's block
// forward is recomputed (with keep) and its backwardBlock run, its dx becoming that window's dy
// for the block below. The W^T gradients are reduced onto the codebooks (src/kernels/codebook.ts)
// in window order, so every gradient sums in the same order whatever `batch` is: results are
// bit-identical to one window at a time (batch 1, the default, is exactly that). Each layer's
// decoded weights and code index are needed twice per pass (forward, backward), not per window.
//
// Memory: per block the GPU holds only the codebooks (f32 [splits * n, d] per linear), their
// AdamW m / v and gradient, the code index (no separate codes: the index lists every code's
// position, see decodeFromIndex), and the two RMSNorm weights. With indexOnHost the code
// indexes stay in host memory instead and ONE layer-sized set of index buffers per linear kind
// (sized for the largest layer) is rewritten when a layer becomes current (twice per pass:
// 2 * (layers - 1) layer uploads per pass in steady state). ONE shared set of dense buffers
// (W^T and W of each of the 7 linear kinds, one block's worth) is decoded from a block's
// codebooks and code indexes right before its forwards, and again before its recomputed
// forwards in the backward. The embedding stays on the host (frozen: the lookup is a host
// gather of T rows); the LM head is on the GPU in both layouts (lm_head^T [H, V] for the
// logits, W [V, H] for the input gradient), frozen unless trainHead (untied models only).
// Logits are computed in row chunks of at most one binding. See CodebookTrainer.gpuBytes.
import type { BufferRange, Gpu, GpuLimits } from "../gpu/device.ts";
import { rowChunks, Tensor } from "../gpu/tensor.ts";
import { type LinearKind, linearNames, type ModelConfig, ropeInvFreq } from "../io/config.ts";
import { unpackCodes } from "../io/pack.ts";
import { adamwAll } from "../kernels/adamw.ts";
import { NO_TARGET, rmsnormBackward, softmaxXentBackward } from "../kernels/backward.ts";
import {
  buildCodeIndex,
  codebookGrad,
  codeChunkRows,
  type CodeIndex,
  type CodeIndexData,
  codeIndexData,
  decodeFromIndex,
  type GpuCodeIndex,
  PIECE_ITEMS,
  prepareCodeIndex,
} from "../kernels/codebook.ts";
import { checkIds } from "../kernels/embedding.ts";
import { nll } from "../kernels/loss.ts";
import { matmul } from "../kernels/matmul.ts";
import { rmsnorm } from "../kernels/norm.ts";
import { ropeTables } from "../kernels/rope.ts";
import { SOFT_XENT_MAX_K, softXent } from "../kernels/soft_xent.ts";
import { transpose as transposeGpu } from "../kernels/transpose.ts";
import type { ClusterModule } from "../format/compressed.ts";
import { openModel } from "../format/open.ts";
import { backwardBlock, BackwardScratch } from "../model/backward.ts";
import {
  BlockScratch,
  type DenseBlockWeights,
  forwardBlock,
  type KeptActivations,
} from "../model/block.ts";
import type { WeightSource } from "../model/weights.ts";
import { transpose } from "../util/matrix.ts";

export interface TrainWindow {
  /** seqlen + 1 token ids: inputs ids[0..T-1], next-token targets ids[1..T]. */
  ids: Int32Array;
  /** Optional [T]: 1 where position t's target counts in the loss (Alpaca: response tokens only). Absent: all count. */
  mask?: Uint8Array;
  /** Optional teacher distribution per position, for distillation: top-k ids and probabilities
   *  [T * k] (probabilities of each row sum to <= 1; the kernel renormalizes over the k given). */
  teacher?: { k: number; ids: Int32Array; probs: Float32Array };
}

export interface CodebookTrainOptions {
  seqlen: number;
  /** Also train the input / post-attention RMSNorm weights of every block and the final norm. */
  trainNorms?: boolean;
  /** Also train the LM head (untied models only: a tied head is the frozen embedding). */
  trainHead?: boolean;
  /** Weight of the distillation term when a window has teacher probs: loss = w * CE(teacher soft targets) + (1 - w) * CE(hard targets). Default 1. */
  kdWeight?: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** Decoupled weight decay of codebooks and the head (norms are not decayed). Default 0. */
  weightDecay?: number;
  /**
   * Windows per layer-major pass (see the header): the GPU stores batch x layers layer inputs
   * [H, T]; computeGradients / evaluate take any number of windows, in passes of at most this
   * many (same results for any value). Default 1.
   */
  batch?: number;
  /**
   * Keep every layer's code index in host memory and upload the current layer's into one
   * shared layer-sized set of GPU buffers (see the header); false: every index resident on the
   * GPU; "auto": offload when the resident gpuBytes would exceed gpuMemory. Default false.
   */
  indexOnHost?: boolean | "auto";
  /** GPU bytes available to the trainer, for indexOnHost "auto" (required there). */
  gpuMemory?: number;
}

/** Codebook settings of a linear. */
export interface CodebookShapes {
  d: number;
  n: number;
  splits: number;
}

/** A trained tensor with its gradient and AdamW moments. */
interface Param {
  /** HF name (codebooks: "<module>.codebook"). */
  name: string;
  t: Tensor;
  grad: Tensor;
  m: Tensor;
  v: Tensor;
  decay: boolean;
}

/** One linear of one block: codebook parameter and code index (which also decodes W^T). */
interface Book {
  kind: LinearKind;
  inDim: number;
  out: number;
  d: number;
  p: Param;
  /** Resident: the layer's own buffers; indexOnHost: the kind's shared buffers. */
  index: GpuCodeIndex;
  /** indexOnHost: the index buffers' data, written into the shared buffers when current. */
  host?: CodeIndexData;
}

/** Options of gpuBytes / hostBytes. */
export interface CodebookMemoryOptions {
  trainNorms?: boolean;
  trainHead?: boolean;
  /** Windows per pass (CodebookTrainOptions.batch). Default 1. */
  batch?: number;
  /** Code indexes on the host (the resolved CodebookTrainOptions.indexOnHost). Default false. */
  indexOnHost?: boolean;
}

interface Layer {
  books: Book[];
  inputNorm: Tensor;
  postNorm: Tensor;
  /** Gradients and moments of the norms when trainNorms. */
  inputNormP?: Param;
  postNormP?: Param;
}

/** Bytes createBuffer allocates for n f32/u32 values. */
const buf = (n: number) => Math.max(16, n * 4);

export class CodebookTrainer {
  readonly T: number;
  /** Windows per layer-major pass. */
  readonly batch: number;
  /** Whether the code indexes live on the host (indexOnHost resolved). */
  readonly indexOnHost: boolean;
  /** Optimizer steps taken. */
  steps = 0;
  /** Code index bytes written to the GPU by layer switches (indexOnHost) so far. */
  bytesUploaded = 0;
  private readonly layers: Layer[] = [];
  /** Every trained parameter, in a fixed order. */
  private readonly params: Param[] = [];
  /** The shared decode buffers: W^T [in, out] (forward) and W [out, in] (backward). */
  private readonly wT = {} as Record<LinearKind, Tensor>;
  private readonly w = {} as Record<LinearKind, Tensor>;
  /** Which layer wT (and w) currently hold, -1 for none. */
  private decodedT = -1;
  private decodedW = -1;
  /** indexOnHost: the shared index buffers of each linear kind, and whose layer they hold. */
  private readonly shared = {} as Record<
    LinearKind,
    { ix: GPUBuffer; items: GPUBuffer; partial: GPUBuffer }
  >;
  private indexLayer = -1;
  private embedding!: Float32Array;
  private finalNorm!: Tensor;
  private finalNormP?: Param;
  private headT!: Tensor;
  private headW!: Tensor;
  private headP?: Param;
  private readonly buf: Record<string, Tensor> = {};
  /** [window][layer]: each window's input of each block (evaluate: [window][0], its state). */
  private layerIn: Tensor[][] = [];
  /** batch + 1 gradient buffers [H, T]: each window's dy, and one free for a dx. */
  private dPool: Tensor[] = [];
  private keep!: KeptActivations;
  private scratch!: BlockScratch;
  private bs!: BackwardScratch;
  private logitRows = 0;
  private readonly beta1: number;
  private readonly beta2: number;
  private readonly eps: number;
  private readonly wd: number;
  private readonly kdWeight: number;
  private readonly trainNorms: boolean;
  private readonly trainHead: boolean;

  private constructor(
    readonly gpu: Gpu,
    readonly cfg: ModelConfig,
    opts: CodebookTrainOptions,
    indexOnHost: boolean,
  ) {
    this.T = opts.seqlen;
    this.batch = opts.batch ?? 1;
    this.indexOnHost = indexOnHost;
    this.beta1 = opts.beta1 ?? 0.9;
    this.beta2 = opts.beta2 ?? 0.95;
    this.eps = opts.eps ?? 1e-8;
    this.wd = opts.weightDecay ?? 0;
    this.kdWeight = opts.kdWeight ?? 1;
    this.trainNorms = opts.trainNorms ?? false;
    this.trainHead = opts.trainHead ?? false;
  }

  /** A trainer over a compressed (cluscomp) folder: every linear must be a ClusComp codebook. */
  static async fromFolder(
    gpu: Gpu,
    dir: string,
    opts: CodebookTrainOptions,
  ): Promise<CodebookTrainer> {
    const m = await openModel(dir);
    if (!m.quant || m.quant.quant_method !== "cluscomp") {
      throw new Error(`CodebookTrainer: ${dir} is not a ClusComp-compressed folder`);
    }
    CodebookTrainer.check(m.cfg, opts);
    let indexOnHost = opts.indexOnHost ?? false;
    if (indexOnHost === "auto") {
      const shapes = {} as Record<LinearKind, CodebookShapes>;
      for (const lin of linearNames(0, m.cfg)) {
        const c = m.quant.modules[lin.name.replace(/\.weight$/, "")] as ClusterModule | undefined;
        if (!c) throw new Error(`CodebookTrainer: ${lin.name} is not a ClusComp codebook`);
        shapes[lin.kind] = c;
      }
      const resident = CodebookTrainer.gpuBytes(
        m.cfg,
        shapes,
        opts.seqlen,
        gpu.limits.maxBinding,
        { ...opts, indexOnHost: false },
      );
      indexOnHost = resident > opts.gpuMemory!;
    }
    const tr = new CodebookTrainer(gpu, m.cfg, opts, indexOnHost);
    try {
      await tr.setup(m.source);
    } catch (e) {
      tr.release();
      throw e;
    }
    return tr;
  }

  private static check(cfg: ModelConfig, opts: CodebookTrainOptions): void {
    if (!(Number.isInteger(opts.seqlen) && opts.seqlen >= 1)) {
      throw new Error(`CodebookTrainer: seqlen ${opts.seqlen} must be a positive integer`);
    }
    if (opts.trainHead && cfg.tieEmbeddings) {
      throw new Error(
        "CodebookTrainer: trainHead is not supported for a model with tied embeddings " +
          "(its LM head is the frozen embedding); leave trainHead off",
      );
    }
    const kd = opts.kdWeight ?? 1;
    if (!(kd >= 0 && kd <= 1)) throw new Error(`CodebookTrainer: kdWeight ${kd} is outside [0, 1]`);
    const batch = opts.batch ?? 1;
    if (!(Number.isInteger(batch) && batch >= 1)) {
      throw new Error(`CodebookTrainer: batch ${batch} must be a positive integer`);
    }
    const ioh = opts.indexOnHost ?? false;
    if (ioh !== true && ioh !== false && ioh !== "auto") {
      throw new Error(`CodebookTrainer: indexOnHost ${ioh} is not true, false or "auto"`);
    }
    if (ioh === "auto" && !(opts.gpuMemory !== undefined && opts.gpuMemory > 0)) {
      throw new Error(`CodebookTrainer: indexOnHost "auto" needs gpuMemory (bytes)`);
    }
  }

  private async param(name: string, data: Float32Array, decay: boolean): Promise<Param> {
    const gpu = this.gpu, n = data.length;
    const p: Param = {
      name,
      t: await Tensor.from(gpu, data, [n], name),
      grad: Tensor.empty(gpu, [n], `grad ${name}`),
      m: await Tensor.from(gpu, new Float32Array(n), [n], `m ${name}`),
      v: await Tensor.from(gpu, new Float32Array(n), [n], `v ${name}`),
      decay,
    };
    this.params.push(p);
    return p;
  }

  private async setup(src: WeightSource): Promise<void> {
    const gpu = this.gpu, cfg = this.cfg, T = this.T, H = cfg.hidden, V = cfg.vocab;
    if (!src.codebook) throw new Error("CodebookTrainer: the folder holds no codebooks");
    for (let l = 0; l < cfg.layers; l++) {
      const books: Book[] = [];
      for (const lin of linearNames(l, cfg)) {
        const c = await src.codebook(l, lin.kind);
        if (!c) throw new Error(`CodebookTrainer: ${lin.name} is not a ClusComp codebook`);
        const cols = Math.ceil(lin.out / c.d), count = lin.in * cols;
        const codes = unpackCodes(c.codes, count, c.bits);
        // One codebook of splits * n entries: split s's codes move up by s * n.
        const perSplit = (lin.in / c.splits) * cols;
        for (let i = 0; i < count; i++) codes[i] += Math.floor(i / perSplit) * c.n;
        const entries = c.splits * c.n;
        const module = lin.name.replace(/\.weight$/, "");
        const book = {
          kind: lin.kind,
          inDim: lin.in,
          out: lin.out,
          d: c.d,
          p: await this.param(`${module}.codebook`, c.centroids, true),
        };
        if (this.indexOnHost) {
          const chunkRows = codeChunkRows(gpu.limits, lin.in, lin.out);
          const index = buildCodeIndex(codes, entries, lin.in, lin.out, c.d, { chunkRows });
          const host = codeIndexData(gpu.limits, index);
          // The GPU buffers are the kind's shared ones, made once every layer's sizes are known.
          const gi = {
            index: slim(index),
            slotBase: index.pieces.length,
            release() {},
          } as GpuCodeIndex;
          books.push({ ...book, index: gi, host });
        } else {
          const gi = await prepareCodeIndex(gpu, codes, entries, lin.in, lin.out, c.d);
          gi.index = slim(gi.index);
          books.push({ ...book, index: gi });
        }
      }
      const pre = `model.layers.${l}`;
      const inName = `${pre}.input_layernorm.weight`,
        postName = `${pre}.post_attention_layernorm.weight`;
      const layer: Layer = this.trainNorms
        ? await (async () => {
          const a = await this.param(inName, await src.tensor(inName), false);
          const b = await this.param(postName, await src.tensor(postName), false);
          return { books, inputNorm: a.t, postNorm: b.t, inputNormP: a, postNormP: b };
        })()
        : {
          books,
          inputNorm: await Tensor.from(gpu, await src.tensor(inName), [H], inName),
          postNorm: await Tensor.from(gpu, await src.tensor(postName), [H], postName),
        };
      this.layers.push(layer);
    }
    const normName = "model.norm.weight";
    if (this.trainNorms) {
      this.finalNormP = await this.param(normName, await src.tensor(normName), false);
      this.finalNorm = this.finalNormP.t;
    } else {
      this.finalNorm = await Tensor.from(gpu, await src.tensor(normName), [H], normName);
    }
    this.embedding = await src.tensor("model.embed_tokens.weight");
    const headT = await src.lmHeadT();
    if (this.trainHead) {
      if (V * H * 4 > gpu.limits.maxBinding) {
        throw new Error(
          `CodebookTrainer: trainHead needs the [${V}, ${H}] head in one ` +
            `${gpu.limits.maxBinding}-byte binding; leave trainHead off`,
        );
      }
      this.headP = await this.param("lm_head.weight", headT, true);
      this.headT = this.headP.t;
    } else {
      this.headT = await Tensor.from(gpu, headT, [H, V], "lm_head^T");
    }
    this.headW = await Tensor.from(gpu, transpose(headT, H, V), [V, H], "lm_head W");

    for (const lin of linearNames(0, cfg)) {
      this.wT[lin.kind] = Tensor.empty(gpu, [lin.in, lin.out], `decode ${lin.kind} W^T`);
      this.w[lin.kind] = Tensor.empty(gpu, [lin.out, lin.in], `decode ${lin.kind} W`);
    }
    if (this.indexOnHost) {
      for (const lin of linearNames(0, cfg)) {
        const books = this.layers.map((L) => L.books.find((b) => b.kind === lin.kind)!);
        const most = (f: (b: Book) => number) => Math.max(...books.map(f));
        const sh = this.shared[lin.kind] = {
          ix: gpu.createBuffer(most((b) => b.host!.ix.length) * 4, `shared ${lin.kind} index`),
          items: gpu.createBuffer(
            most((b) => b.host!.items.length) * 4,
            `shared ${lin.kind} items`,
          ),
          partial: gpu.createBuffer(
            most((b) => b.host!.slots * b.d) * 4,
            `shared ${lin.kind} partial sums`,
          ),
        };
        for (const b of books) Object.assign(b.index, sh);
      }
    }
    this.logitRows = logitRows(cfg, T, gpu.limits.maxBinding);
    const e = (
      name: string,
      shape: number[],
      dtype: "f32" | "u32" = "f32",
    ) => (this.buf[name] = Tensor.empty(gpu, shape, `cbtrain.${name}`, dtype));
    for (const name of ["x", "y", "hF", "dhF"]) e(name, [H, T]);
    e("hTok", [T, H]);
    e("logits", [this.logitRows, V]);
    e("dlT", [V, this.logitRows]);
    e("rstd", [T]);
    e("targets", [T], "u32");
    e("loss", [T]);
    this.dPool = Array.from(
      { length: this.batch + 1 },
      (_, i) => Tensor.empty(gpu, [H, T], `cbtrain.d${i}`),
    );
    this.layerIn = Array.from(
      { length: this.batch },
      (_, i) =>
        Array.from(
          { length: cfg.layers },
          (_, l) => Tensor.empty(gpu, [H, T], `cbtrain.in W${i} L${l}`),
        ),
    );
    this.keep = {
      xIn: Tensor.empty(gpu, [H, T], "cbtrain.keep.xIn"),
      h1: Tensor.empty(gpu, [H, T], "cbtrain.keep.h1"),
      x2: Tensor.empty(gpu, [H, T], "cbtrain.keep.x2"),
      g: Tensor.empty(gpu, [cfg.intermediate, T], "cbtrain.keep.g"),
    };
    this.scratch = await BlockScratch.create(gpu, cfg, 1, T, ropeTables(ropeInvFreq(cfg), T));
    if (this.scratch.mlpChunk < T) {
      throw new Error(
        `CodebookTrainer: [${cfg.intermediate}, ${T}] activations exceed one ` +
          `${gpu.limits.maxBinding}-byte binding; lower seqlen`,
      );
    }
    this.bs = new BackwardScratch(gpu, cfg, T, this.scratch.headGroup);
    await gpu.sync();
  }

  /**
   * GPU bytes a trainer holds for cfg and these codebook shapes (one for every linear, or one
   * per linear kind), seqlen T: what it allocates, with the code index's piece count at its upper bound
   * (min(items, chunks * entries) + items / PIECE_ITEMS per linear; exact when every codebook
   * entry is used and no segment exceeds PIECE_ITEMS items). Resident: every layer's index;
   * indexOnHost: one layer's (the shared buffers). The stored layer inputs are
   * batch x layers x [H, T]. Transient per-window teacher buffers ((T * k) * 8 bytes) are not
   * included.
   */
  static gpuBytes(
    cfg: ModelConfig,
    shapes: CodebookShapes | Record<LinearKind, CodebookShapes>,
    T: number,
    maxBinding: number,
    opts: CodebookMemoryOptions = {},
  ): number {
    const H = cfg.hidden, V = cfg.vocab, I = cfg.intermediate;
    const batch = opts.batch ?? 1;
    let perLayer = 0, decode = 0, index = 0;
    for (const c of indexSizes(cfg, shapes, maxBinding)) {
      perLayer += 4 * buf(c.entries * c.d); // codebook, grad, m, v
      index += buf(c.ix) + buf(c.items) + buf(c.pieces * c.d); // code index
      decode += 2 * buf(c.inDim * c.out);
    }
    const norm = (opts.trainNorms ? 4 : 1) * buf(H);
    perLayer += 2 * norm + batch * buf(H * T); // norms, stored layer inputs
    const rows = logitRows(cfg, T, maxBinding);
    let bytes = cfg.layers * perLayer + (opts.indexOnHost ? 1 : cfg.layers) * index + decode + norm;
    bytes += (opts.trainHead ? 4 : 1) * buf(H * V) + buf(V * H); // head^T (+ grad, m, v), head W
    bytes += (4 + batch + 1) * buf(H * T) + buf(T * H) + 2 * buf(rows * V) + 3 * buf(T); // buf, dPool
    bytes += 3 * buf(H * T) + buf(I * T); // keep
    bytes += BlockScratch.bytes(cfg, 1, T, maxBinding);
    const group = BlockScratch.split(cfg, T, T, maxBinding).headGroup;
    for (const [, shape] of BackwardScratch.shapes(cfg, T, group)) {
      bytes += buf(shape.reduce((a, b) => a * b, 1));
    }
    return bytes;
  }

  /**
   * Host bytes of what a trainer keeps in host memory beyond setup (same shapes and piece bound
   * as gpuBytes): the embedding, every code index's chunk offsets, and with indexOnHost every
   * index's buffer data (the piece list and the item positions, 4 bytes per code).
   */
  static hostBytes(
    cfg: ModelConfig,
    shapes: CodebookShapes | Record<LinearKind, CodebookShapes>,
    maxBinding: number,
    opts: CodebookMemoryOptions = {},
  ): number {
    let perLayer = 0;
    for (const c of indexSizes(cfg, shapes, maxBinding)) {
      perLayer += 4 * (c.chunks * c.entries + 1 + c.chunks + 1); // offsets, chunkPieces
      if (opts.indexOnHost) perLayer += 4 * (c.ix + c.items);
    }
    return cfg.vocab * cfg.hidden * 4 + cfg.layers * perLayer;
  }

  /**
   * Code index bytes indexOnHost uploads per computeGradients of `windows` windows in steady
   * state (same piece bound as gpuBytes): 2 * (layers - 1) layer uploads per pass of at most
   * `batch` windows (each pass's forward starts at the layer the last backward ended on, and its
   * backward at the layer its forward ended on). 0 when resident.
   */
  static uploadBytes(
    cfg: ModelConfig,
    shapes: CodebookShapes | Record<LinearKind, CodebookShapes>,
    maxBinding: number,
    windows: number,
    opts: CodebookMemoryOptions = {},
  ): number {
    if (!opts.indexOnHost) return 0;
    let layer = 0;
    for (const c of indexSizes(cfg, shapes, maxBinding)) layer += 4 * (c.ix + c.items);
    return Math.ceil(windows / (opts.batch ?? 1)) * 2 * (cfg.layers - 1) * layer;
  }

  /** Host bytes the trainer holds in the arrays hostBytes counts. */
  get hostBytesHeld(): number {
    let bytes = this.embedding.byteLength;
    for (const L of this.layers) {
      for (const b of L.books) {
        bytes += b.index.index.offsets.byteLength + b.index.index.chunkPieces.byteLength;
        if (b.host) bytes += b.host.ix.byteLength + b.host.items.byteLength;
      }
    }
    return bytes;
  }

  /** Number of trained values. */
  get parameterCount(): number {
    return this.params.reduce((a, p) => a + p.t.size, 0);
  }

  /**
   * Clears gradients, accumulates those of the mean loss over the counted positions of `batch`
   * (layer-major passes of at most this.batch windows, gradients summed in window order),
   * returns the mean loss.
   */
  async computeGradients(batch: TrainWindow[]): Promise<number> {
    if (batch.length === 0) throw new Error("computeGradients: no windows");
    const targets = batch.map((w) => this.targetsOf(w));
    for (const w of batch) if (w.teacher) this.checkTeacher(w.teacher);
    let counted = 0;
    for (const t of targets) for (const v of t) if (v !== NO_TARGET) counted++;
    if (counted === 0) throw new Error("computeGradients: no position counts (all masked)");
    for (const p of this.params) this.gpu.clear(p.grad.buffer);
    let sum = 0;
    for (let i = 0; i < batch.length; i += this.batch) {
      const j = Math.min(batch.length, i + this.batch);
      // Window by window, in order: the same sum for any pass size.
      for (const v of await this.pass(batch.slice(i, j), targets.slice(i, j), 1 / counted, true)) {
        sum += v;
      }
    }
    return sum / counted;
  }

  /** One AdamW step on every trained tensor with the accumulated gradients. */
  applyUpdate(lr: number): void {
    this.steps++;
    adamwAll(this.gpu, this.params, {
      lr,
      beta1: this.beta1,
      beta2: this.beta2,
      eps: this.eps,
      weightDecay: this.wd,
      step: this.steps,
    });
    this.decodedT = this.decodedW = -1;
    if (this.headP) {
      transposeGpu(this.gpu, this.headT.all, this.headW.all, this.cfg.hidden, this.cfg.vocab);
    }
  }

  /** computeGradients then applyUpdate; the mean loss before the update. */
  async step(batch: TrainWindow[], lr: number): Promise<number> {
    const loss = await this.computeGradients(batch);
    this.applyUpdate(lr);
    return loss;
  }

  /**
   * Mean NLL (hard targets, mask respected) and counted tokens, no gradients. Layer-major
   * passes of at most this.batch windows as computeGradients (forward only: with indexOnHost
   * each layer's index is uploaded once per pass).
   */
  async evaluate(windows: TrainWindow[]): Promise<{ nll: number; tokens: number }> {
    const targets = windows.map((w) => this.targetsOf(w));
    let sum = 0, tokens = 0;
    for (const t of targets) for (const v of t) if (v !== NO_TARGET) tokens++;
    for (let i = 0; i < windows.length; i += this.batch) {
      const j = Math.min(windows.length, i + this.batch);
      const ws = windows.slice(i, j).map((w) => ({ ids: w.ids }));
      for (const v of await this.pass(ws, targets.slice(i, j), 0, false)) sum += v;
    }
    return { nll: tokens > 0 ? sum / tokens : NaN, tokens };
  }

  /** Trained tensors (HF names, flat f32; the head in HF [V, H]) with AdamW state, and steps. */
  async state(): Promise<{ tensors: Map<string, Float32Array>; step: number }> {
    const tensors = new Map<string, Float32Array>();
    for (const p of this.params) {
      tensors.set(p.name, await this.hf(p, p.t));
      tensors.set(`${p.name}.adam_m`, await this.hf(p, p.m));
      tensors.set(`${p.name}.adam_v`, await this.hf(p, p.v));
    }
    return { tensors, step: this.steps };
  }

  /** Restores what state() returned. */
  async load(tensors: Map<string, Float32Array>, step: number): Promise<void> {
    for (const p of this.params) {
      for (const [suffix, t] of [["", p.t], [".adam_m", p.m], [".adam_v", p.v]] as const) {
        const name = p.name + suffix;
        const data = tensors.get(name);
        if (!data || data.length !== t.size) {
          throw new Error(`CodebookTrainer.load: ${name} is missing or not ${t.size} values`);
        }
        await this.gpu.write(t.buffer, this.fromHf(p, data));
      }
    }
    this.steps = step;
    this.decodedT = this.decodedW = -1;
    if (this.headP) {
      transposeGpu(this.gpu, this.headT.all, this.headW.all, this.cfg.hidden, this.cfg.vocab);
    }
    await this.gpu.sync();
  }

  /** The trained tensors only, HF-named (codebooks [splits * n * d] flat, norms, head [V, H]). */
  async trained(): Promise<Map<string, Float32Array>> {
    const out = new Map<string, Float32Array>();
    for (const p of this.params) out.set(p.name, await this.hf(p, p.t));
    return out;
  }

  /** The gradient of one trained tensor (after computeGradients), HF layout. */
  async gradient(name: string): Promise<Float32Array> {
    const p = this.params.find((q) => q.name === name);
    if (!p) throw new Error(`CodebookTrainer: no trained tensor ${name}`);
    return await this.hf(p, p.grad);
  }

  release(): void {
    const ts: (Tensor | undefined)[] = [
      ...this.params.flatMap((p) => [p.t, p.grad, p.m, p.v]),
      ...Object.values(this.wT),
      ...Object.values(this.w),
      ...Object.values(this.buf),
      ...this.layerIn.flat(),
      ...this.dPool,
      ...Object.values(this.keep ?? {}),
      this.finalNorm,
      this.headT,
      this.headW,
    ];
    for (const l of this.layers) {
      ts.push(l.inputNorm, l.postNorm);
      for (const b of l.books) b.index.release();
    }
    for (const t of ts) t?.release();
    for (const sh of Object.values(this.shared)) {
      for (const b of [sh.ix, sh.items, sh.partial]) this.gpu.releaseBuffer(b);
    }
    this.scratch?.release();
    this.bs?.release();
  }

  private async hf(p: Param, t: Tensor): Promise<Float32Array> {
    const data = await t.toF32();
    return p === this.headP ? transpose(data, this.cfg.hidden, this.cfg.vocab) : data;
  }

  private fromHf(p: Param, data: Float32Array): Float32Array {
    return p === this.headP ? transpose(data, this.cfg.vocab, this.cfg.hidden) : data;
  }

  /** Targets [T] of a window: ids[1..T], NO_TARGET where the mask is 0. */
  private targetsOf(w: TrainWindow): Uint32Array {
    const T = this.T;
    if (w.ids.length !== T + 1) {
      throw new Error(`CodebookTrainer: a window has ${w.ids.length} ids, not ${T + 1}`);
    }
    checkIds(w.ids, this.cfg.vocab);
    if (w.mask && w.mask.length !== T) {
      throw new Error(`CodebookTrainer: a mask has ${w.mask.length} entries, not ${T}`);
    }
    const out = new Uint32Array(T);
    for (let t = 0; t < T; t++) out[t] = w.mask && !w.mask[t] ? NO_TARGET : w.ids[t + 1];
    return out;
  }

  private checkTeacher(t: NonNullable<TrainWindow["teacher"]>): void {
    const { k, ids, probs } = t, T = this.T;
    if (!(Number.isInteger(k) && k >= 1 && k <= SOFT_XENT_MAX_K)) {
      throw new Error(`CodebookTrainer: teacher k = ${k} is outside [1, ${SOFT_XENT_MAX_K}]`);
    }
    if (ids.length !== T * k || probs.length !== T * k) {
      throw new Error(`CodebookTrainer: teacher ids / probs must hold T * k = ${T * k} values`);
    }
    checkIds(ids, this.cfg.vocab, "teacher ids");
  }

  /** indexOnHost: writes layer l's code indexes into the shared buffers unless they hold them. */
  private async useIndex(l: number): Promise<void> {
    if (!this.indexOnHost || this.indexLayer === l) return;
    this.indexLayer = -1;
    for (const b of this.layers[l].books) {
      const h = b.host!;
      await this.gpu.write(b.index.ix, h.ix);
      await this.gpu.write(b.index.items, h.items);
      this.bytesUploaded += h.ix.byteLength + h.items.byteLength;
    }
    this.indexLayer = l;
  }

  /**
   * Makes layer l current: its code indexes (indexOnHost), its codebooks decoded into the
   * shared W^T buffers (and W when `both`).
   */
  private async decode(l: number, both: boolean): Promise<void> {
    const gpu = this.gpu;
    await this.useIndex(l);
    if (this.decodedT !== l) {
      for (const b of this.layers[l].books) {
        decodeFromIndex(gpu, b.p.t.all, b.index, this.wT[b.kind].all, b.inDim, b.out, b.d);
      }
      this.decodedT = l;
      this.decodedW = -1;
    }
    if (both && this.decodedW !== l) {
      for (const b of this.layers[l].books) {
        transposeGpu(gpu, this.wT[b.kind].all, this.w[b.kind].all, b.inDim, b.out);
      }
      this.decodedW = l;
    }
  }

  private block(l: number): DenseBlockWeights {
    const L = this.layers[l];
    return { layer: l, w: this.wT, inputNorm: L.inputNorm, postNorm: L.postNorm };
  }

  /**
   * One layer-major pass over ws (at most this.batch windows): the forward (and with
   * `backward`, the backward with gradients scaled by `scale`, accumulated in window order);
   * returns each window's summed loss over its counted positions.
   */
  private async pass(
    ws: TrainWindow[],
    targets: Uint32Array[],
    scale: number,
    backward: boolean,
  ): Promise<number[]> {
    const gpu = this.gpu, cfg = this.cfg, T = this.T, H = cfg.hidden, L = cfg.layers;
    const b = this.buf, bytes = H * T * 4;
    // Host embedding gather into feature-major [H, T]: each window's block-0 input.
    for (let i = 0; i < ws.length; i++) {
      const x0 = new Float32Array(H * T);
      for (let t = 0; t < T; t++) {
        const row = ws[i].ids[t] * H;
        for (let h = 0; h < H; h++) x0[h * T + t] = this.embedding[row + h];
      }
      await gpu.write(this.layerIn[i][0].buffer, x0);
    }
    // Forward, block by block over every window, storing each window's block inputs (evaluate:
    // each window's state stays in its layerIn[i][0]); after the last block, the head and loss
    // of the window (training: its dy into dPool[i]).
    const sums: number[] = [];
    for (let l = 0; l < L; l++) {
      await this.decode(l, false);
      for (let i = 0; i < ws.length; i++) {
        const src = this.layerIn[i][backward ? l : 0];
        if (l === L - 1) {
          gpu.copy(src.buffer, 0, b.x.buffer, 0, bytes);
          forwardBlock(gpu, this.block(l), b.x, this.scratch);
          sums.push(await this.head(ws[i], targets[i], scale, backward, this.dPool[i]));
        } else if (backward) {
          const dst = this.layerIn[i][l + 1];
          gpu.copy(src.buffer, 0, dst.buffer, 0, bytes);
          forwardBlock(gpu, this.block(l), dst, this.scratch);
        } else {
          forwardBlock(gpu, this.block(l), src, this.scratch);
        }
      }
    }
    if (!backward) return sums;

    // Blocks in reverse: decode, then per window recompute the forward with keep and run the
    // backward; the window's dx (a free pool buffer) becomes its dy.
    const dy = ws.map((_, i) => this.dPool[i]);
    let free = this.dPool[ws.length];
    for (let l = L - 1; l >= 0; l--) {
      const Lr = this.layers[l];
      const byKind = Object.fromEntries(Lr.books.map((k) => [k.kind, k])) as Record<
        LinearKind,
        Book
      >;
      await this.decode(l, true);
      for (let i = 0; i < ws.length; i++) {
        gpu.copy(this.layerIn[i][l].buffer, 0, b.y.buffer, 0, bytes);
        forwardBlock(gpu, this.block(l), b.y, this.scratch, this.keep);
        backwardBlock(gpu, this.block(l), this.scratch, this.keep, this.bs, dy[i], {
          w: this.w,
          // Block 0's input gradient is needed only for its input-norm gradient (frozen embedding).
          dx: l > 0 || Lr.inputNormP ? free : undefined,
          dInputNorm: Lr.inputNormP?.grad,
          dPostNorm: Lr.postNormP?.grad,
          onWeightGrad: (kind: LinearKind, dwT: BufferRange) =>
            codebookGrad(gpu, dwT, byKind[kind].index, byKind[kind].p.grad.all, {
              accumulate: true,
            }),
        });
        [dy[i], free] = [free, dy[i]];
      }
    }
    return sums;
  }

  /**
   * The final norm, head and loss of one window whose last block output is in buf.x; returns its
   * summed loss over the counted positions. With `backward`, the gradients of the head (scaled
   * by `scale`) and the final norm, and the window's dy (the final norm's input gradient) in `dy`.
   */
  private async head(
    w: TrainWindow,
    targets: Uint32Array,
    scale: number,
    backward: boolean,
    dy: Tensor,
  ): Promise<number> {
    const gpu = this.gpu, cfg = this.cfg, T = this.T, H = cfg.hidden, V = cfg.vocab;
    const b = this.buf, eps = cfg.rmsNormEps;
    await gpu.write(b.targets.buffer, targets);
    let teacher: { k: number; ids: Tensor; probs: Tensor } | null = null;
    if (backward && w.teacher) {
      const { k, ids, probs } = w.teacher; // checked by computeGradients
      teacher = {
        k,
        ids: await Tensor.from(gpu, Uint32Array.from(ids), [T * k], "cbtrain.teacher ids"),
        probs: await Tensor.from(gpu, probs, [T * k], "cbtrain.teacher probs"),
      };
    }
    try {
      rmsnorm(gpu, b.x.all, this.finalNorm.all, b.hF.all, H, T, eps);
      if (backward) transposeGpu(gpu, b.hF.all, b.hTok.all, H, T);
      const { maxBinding, align } = gpu.limits;
      for (const c of rowChunks(T, V * 4, Math.min(maxBinding, this.logitRows * V * 4), align)) {
        // logits [rows, V] = hF[:, rows]^T lm_head^T
        matmul(gpu, {
          M: c.rows,
          N: V,
          K: H,
          a: b.hF.buffer,
          aOffset: c.row0,
          lda: T,
          b: this.headT.buffer,
          ldb: V,
          c: b.logits.buffer,
          ldc: V,
        });
        const logits = b.logits.rows(0, c.rows);
        if (!backward) {
          nll(gpu, logits, b.targets.all, b.loss.all, c.rows, V, c.row0);
          continue;
        }
        if (teacher) {
          softXent(gpu, {
            logits,
            targets: b.targets.all,
            teacherIds: teacher.ids.all,
            teacherProbs: teacher.probs.all,
            loss: b.loss.all,
            T: c.rows,
            V,
            k: teacher.k,
            weight: this.kdWeight,
            scale,
            t0: c.row0,
          });
        } else {
          nll(gpu, logits, b.targets.all, b.loss.all, c.rows, V, c.row0);
          softmaxXentBackward(gpu, logits, b.targets.all, logits, c.rows, V, scale, c.row0);
        }
        if (this.headP) {
          // d lm_head^T [H, V] += hTok[rows, H]^T dlogits[rows, V]
          matmul(gpu, {
            M: H,
            N: V,
            K: c.rows,
            a: b.hTok.buffer,
            aOffset: c.row0 * H,
            lda: H,
            b: b.logits.buffer,
            ldb: V,
            c: this.headP.grad.buffer,
            ldc: V,
            accumulate: true,
          });
        }
        // dhF[:, rows] = W^T-contraction: sum_v W[v, h] dlogits[t, v]
        transposeGpu(
          gpu,
          logits,
          { buffer: b.dlT.buffer, offset: 0, size: V * c.rows * 4 },
          c.rows,
          V,
        );
        matmul(gpu, {
          M: H,
          N: c.rows,
          K: V,
          a: this.headW.buffer,
          lda: H,
          b: b.dlT.buffer,
          ldb: c.rows,
          c: b.dhF.buffer,
          cOffset: c.row0,
          ldc: T,
        });
      }
      const lossValues = new Float32Array(await gpu.read(b.loss.buffer, 0, T * 4));
      let sum = 0;
      for (let t = 0; t < T; t++) if (targets[t] !== NO_TARGET) sum += lossValues[t];
      if (backward) {
        rmsnormBackward(gpu, b.x.all, this.finalNorm.all, b.dhF.all, dy.all, H, T, eps, {
          dw: this.finalNormP?.grad.all,
          rstd: b.rstd.all,
        });
      }
      return sum;
    } finally {
      teacher?.ids.release();
      teacher?.probs.release();
    }
  }
}

/** A code index's host-held arrays without what only its upload needed (positions, pieces, slotOffsets). */
function slim(index: CodeIndex): CodeIndex {
  const none = new Uint32Array(0);
  return { ...index, positions: none, pieces: none, slotOffsets: none };
}

/** Per linear of a layer: the code index's sizes (u32 counts) at the piece upper bound. */
function indexSizes(
  cfg: ModelConfig,
  shapes: CodebookShapes | Record<LinearKind, CodebookShapes>,
  maxBinding: number,
) {
  const limits = { maxBinding, align: 256 } as GpuLimits;
  return linearNames(0, cfg).map((lin) => {
    const { d, n, splits } = "d" in shapes ? shapes : shapes[lin.kind];
    const entries = splits * n;
    const cols = Math.ceil(lin.out / d), items = lin.in * cols;
    const chunkRows = codeChunkRows(limits, lin.in, lin.out);
    const chunks = Math.ceil(lin.in / chunkRows);
    const pieces = Math.min(items, chunks * entries) + Math.floor(items / PIECE_ITEMS);
    return {
      inDim: lin.in,
      out: lin.out,
      d,
      entries,
      chunks,
      pieces,
      items,
      ix: pieces * 3 + entries + 1,
    };
  });
}

/** Token rows per logits chunk: [rows, V] within one binding. */
function logitRows(cfg: ModelConfig, T: number, maxBinding: number): number {
  return Math.max(1, Math.min(T, Math.floor(maxBinding / 4 / cfg.vocab)));
}
