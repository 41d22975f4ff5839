// Whole-model training of a compressed (ClusComp) Llama: every linear is a codebook of f32
// centroids with fixed codes, trained on the next-token loss of the whole model (optionally
// mixed with a teacher's top-k distribution for distillation), with AdamW. Structure as
// src/train/trainer.ts: one window at a time, only each layer's input stored during the forward,
// the backward recomputes each block's forward (with keep) before its backwardBlock, layer by
// layer in reverse; the W^T gradients are reduced onto the codebooks (src/kernels/codebook.ts).
//
// Memory: per block the GPU holds only the codebooks (f32 [splits * n, d] per linear), their
// AdamW m / v and gradient, the code index (no separate codes: the index lists every code's
// position, see decodeFromIndex), and the two RMSNorm weights. ONE shared set of dense buffers
// (W^T and W of each of the 7 linear kinds, one block's worth) is decoded from a block's
// codebooks and code indexes right before its forward, and again before its recomputed forward
// in the backward. The embedding stays on the host (frozen: the lookup is a host
// gather of T rows); the LM head is on the GPU in both layouts (lm_head^T [H, V] for the
// logits, W [V, H] for the input gradient), frozen unless trainHead (untied models only).
// Logits are computed in row chunks of at most one binding. See CodebookTrainer.gpuBytes.
import type { BufferRange, Gpu, GpuLimits } from "../gpu/device.ts";
import { rowChunks, Tensor } from "../gpu/tensor.ts";
import { type LinearKind, linearNames, type ModelConfig, ropeInvFreq } from "../io/config.ts";
import { unpackCodes } from "../io/pack.ts";
import { adamw } from "../kernels/adamw.ts";
import { NO_TARGET, rmsnormBackward, softmaxXentBackward } from "../kernels/backward.ts";
import {
  codebookGrad,
  codeChunkRows,
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
  index: GpuCodeIndex;
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
  /** Optimizer steps taken. */
  steps = 0;
  private readonly layers: Layer[] = [];
  /** Every trained parameter, in a fixed order. */
  private readonly params: Param[] = [];
  /** The shared decode buffers: W^T [in, out] (forward) and W [out, in] (backward). */
  private readonly wT = {} as Record<LinearKind, Tensor>;
  private readonly w = {} as Record<LinearKind, Tensor>;
  /** Which layer wT (and w) currently hold, -1 for none. */
  private decodedT = -1;
  private decodedW = -1;
  private embedding!: Float32Array;
  private finalNorm!: Tensor;
  private finalNormP?: Param;
  private headT!: Tensor;
  private headW!: Tensor;
  private headP?: Param;
  private readonly buf: Record<string, Tensor> = {};
  private layerIn: Tensor[] = [];
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

  private constructor(readonly gpu: Gpu, readonly cfg: ModelConfig, opts: CodebookTrainOptions) {
    this.T = opts.seqlen;
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
    const tr = new CodebookTrainer(gpu, m.cfg, opts);
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
        books.push({
          kind: lin.kind,
          inDim: lin.in,
          out: lin.out,
          d: c.d,
          p: await this.param(`${module}.codebook`, c.centroids, true),
          index: await prepareCodeIndex(gpu, codes, entries, lin.in, lin.out, c.d),
        });
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
    this.logitRows = logitRows(cfg, T, gpu.limits.maxBinding);
    const e = (
      name: string,
      shape: number[],
      dtype: "f32" | "u32" = "f32",
    ) => (this.buf[name] = Tensor.empty(gpu, shape, `cbtrain.${name}`, dtype));
    for (const name of ["x", "y", "hF", "dhF", "dA", "dB"]) e(name, [H, T]);
    e("hTok", [T, H]);
    e("logits", [this.logitRows, V]);
    e("dlT", [V, this.logitRows]);
    e("rstd", [T]);
    e("targets", [T], "u32");
    e("loss", [T]);
    this.layerIn = Array.from(
      { length: cfg.layers },
      (_, l) => Tensor.empty(gpu, [H, T], `cbtrain.in L${l}`),
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
   * entry is used and no segment exceeds PIECE_ITEMS items). Transient per-window teacher
   * buffers ((T * k) * 8 bytes) are not included.
   */
  static gpuBytes(
    cfg: ModelConfig,
    shapes: CodebookShapes | Record<LinearKind, CodebookShapes>,
    T: number,
    maxBinding: number,
    opts: { trainNorms?: boolean; trainHead?: boolean } = {},
  ): number {
    const H = cfg.hidden, V = cfg.vocab, I = cfg.intermediate;
    const limits = { maxBinding, align: 256 } as GpuLimits;
    let perLayer = 0, decode = 0;
    for (const lin of linearNames(0, cfg)) {
      const { d, n, splits } = "d" in shapes ? shapes : shapes[lin.kind];
      const entries = splits * n, size = entries * d;
      const cols = Math.ceil(lin.out / d), items = lin.in * cols;
      const chunkRows = codeChunkRows(limits, lin.in, lin.out);
      const chunks = Math.ceil(lin.in / chunkRows);
      const pieces = Math.min(items, chunks * entries) + Math.floor(items / PIECE_ITEMS);
      perLayer += 4 * buf(size) + // codebook, grad, m, v
        buf(pieces * 3 + entries + 1) + buf(items) + buf(pieces * d); // code index
      decode += 2 * buf(lin.in * lin.out);
    }
    const norm = (opts.trainNorms ? 4 : 1) * buf(H);
    perLayer += 2 * norm + buf(H * T); // norms, stored layer input
    const rows = logitRows(cfg, T, maxBinding);
    let bytes = cfg.layers * perLayer + decode + norm;
    bytes += (opts.trainHead ? 4 : 1) * buf(H * V) + buf(V * H); // head^T (+ grad, m, v), head W
    bytes += 6 * buf(H * T) + buf(T * H) + 2 * buf(rows * V) + 3 * buf(T); // buf
    bytes += 3 * buf(H * T) + buf(I * T); // keep
    bytes += BlockScratch.bytes(cfg, 1, T, maxBinding);
    const group = BlockScratch.split(cfg, T, T, maxBinding).headGroup;
    for (const [, shape] of BackwardScratch.shapes(cfg, T, group)) {
      bytes += buf(shape.reduce((a, b) => a * b, 1));
    }
    return bytes;
  }

  /** Number of trained values. */
  get parameterCount(): number {
    return this.params.reduce((a, p) => a + p.t.size, 0);
  }

  /**
   * Clears gradients, accumulates those of the mean loss over the counted positions of `batch`
   * (one window at a time), returns the mean loss.
   */
  async computeGradients(batch: TrainWindow[]): Promise<number> {
    if (batch.length === 0) throw new Error("computeGradients: no windows");
    const targets = batch.map((w) => this.targetsOf(w));
    let counted = 0;
    for (const t of targets) for (const v of t) if (v !== NO_TARGET) counted++;
    if (counted === 0) throw new Error("computeGradients: no position counts (all masked)");
    for (const p of this.params) this.gpu.clear(p.grad.buffer);
    let sum = 0;
    for (let i = 0; i < batch.length; i++) {
      sum += await this.window(batch[i], targets[i], 1 / counted, true);
    }
    return sum / counted;
  }

  /** One AdamW step on every trained tensor with the accumulated gradients. */
  applyUpdate(lr: number): void {
    this.steps++;
    for (const p of this.params) {
      adamw(this.gpu, p.t.all, p.grad.all, p.m.all, p.v.all, p.t.size, {
        lr,
        beta1: this.beta1,
        beta2: this.beta2,
        eps: this.eps,
        weightDecay: p.decay ? this.wd : 0,
        step: this.steps,
      });
    }
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

  /** Mean NLL (hard targets, mask respected) and counted tokens, no gradients. */
  async evaluate(windows: TrainWindow[]): Promise<{ nll: number; tokens: number }> {
    let sum = 0, tokens = 0;
    for (const w of windows) {
      const t = this.targetsOf(w);
      for (const v of t) if (v !== NO_TARGET) tokens++;
      sum += await this.window({ ids: w.ids }, t, 0, false);
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
      ...this.layerIn,
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

  /** Decodes layer l's codebooks into the shared W^T buffers (and W when `both`). */
  private decode(l: number, both: boolean): void {
    const gpu = this.gpu;
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
   * Forward (and with `backward`, backward with gradients scaled by `scale`) of one window;
   * returns the window's summed loss over its counted positions.
   */
  private async window(
    w: TrainWindow,
    targets: Uint32Array,
    scale: number,
    backward: boolean,
  ): Promise<number> {
    const gpu = this.gpu, cfg = this.cfg, T = this.T, H = cfg.hidden, V = cfg.vocab;
    const b = this.buf, eps = cfg.rmsNormEps;
    const bytes = H * T * 4;
    // Host embedding gather into feature-major x [H, T].
    const x0 = new Float32Array(H * T);
    for (let t = 0; t < T; t++) {
      const row = w.ids[t] * H;
      for (let h = 0; h < H; h++) x0[h * T + t] = this.embedding[row + h];
    }
    await gpu.write(b.x.buffer, x0);
    await gpu.write(b.targets.buffer, targets);
    let teacher: { k: number; ids: Tensor; probs: Tensor } | null = null;
    if (backward && w.teacher) {
      const { k, ids, probs } = w.teacher;
      if (!(Number.isInteger(k) && k >= 1 && k <= SOFT_XENT_MAX_K)) {
        throw new Error(`CodebookTrainer: teacher k = ${k} is outside [1, ${SOFT_XENT_MAX_K}]`);
      }
      if (ids.length !== T * k || probs.length !== T * k) {
        throw new Error(`CodebookTrainer: teacher ids / probs must hold T * k = ${T * k} values`);
      }
      checkIds(ids, V, "teacher ids");
      teacher = {
        k,
        ids: await Tensor.from(gpu, Uint32Array.from(ids), [T * k], "cbtrain.teacher ids"),
        probs: await Tensor.from(gpu, probs, [T * k], "cbtrain.teacher probs"),
      };
    }

    // Forward, storing each layer's input.
    for (let l = 0; l < cfg.layers; l++) {
      if (backward) gpu.copy(b.x.buffer, 0, this.layerIn[l].buffer, 0, bytes);
      this.decode(l, false);
      forwardBlock(gpu, this.block(l), b.x, this.scratch);
    }
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
    if (!backward) return sum;

    rmsnormBackward(gpu, b.x.all, this.finalNorm.all, b.dhF.all, b.dA.all, H, T, eps, {
      dw: this.finalNormP?.grad.all,
      rstd: b.rstd.all,
    });
    // Blocks in reverse: decode, recompute the forward with keep, then the backward.
    let dy = b.dA, dx = b.dB;
    for (let l = cfg.layers - 1; l >= 0; l--) {
      const L = this.layers[l];
      const byKind = Object.fromEntries(L.books.map((k) => [k.kind, k])) as Record<
        LinearKind,
        Book
      >;
      gpu.copy(this.layerIn[l].buffer, 0, b.y.buffer, 0, bytes);
      this.decode(l, true);
      forwardBlock(gpu, this.block(l), b.y, this.scratch, this.keep);
      backwardBlock(gpu, this.block(l), this.scratch, this.keep, this.bs, dy, {
        w: this.w,
        // Block 0's input gradient is needed only for its input-norm gradient (frozen embedding).
        dx: l > 0 || L.inputNormP ? dx : undefined,
        dInputNorm: L.inputNormP?.grad,
        dPostNorm: L.postNormP?.grad,
        onWeightGrad: (kind: LinearKind, dwT: BufferRange) =>
          codebookGrad(gpu, dwT, byKind[kind].index, byKind[kind].p.grad.all, {
            accumulate: true,
          }),
      });
      [dy, dx] = [dx, dy];
    }
    if (teacher) {
      teacher.ids.release();
      teacher.probs.release();
    }
    return sum;
  }
}

/** Token rows per logits chunk: [rows, V] within one binding. */
function logitRows(cfg: ModelConfig, T: number, maxBinding: number): number {
  return Math.max(1, Math.min(T, Math.floor(maxBinding / 4 / cfg.vocab)));
}
