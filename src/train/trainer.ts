// Full-model training of a Llama on the GPU with the project's kernels: embedding lookup, the
// decoder blocks (forwardBlock / backwardBlock), final RMSNorm, untied LM head, softmax
// cross-entropy, and AdamW on every parameter. One window of T tokens at a time; a step
// accumulates the gradients of several windows. Only each layer's input is stored during the
// forward; the backward recomputes that layer's forward (with keep) before its backward, layer
// by layer in reverse. Everything is deterministic: the same seed gives the same bytes.
import type { BufferRange, Gpu } from "../gpu/device.ts";
import { Tensor } from "../gpu/tensor.ts";
import {
  expectedTensors,
  type LinearKind,
  linearNames,
  type ModelConfig,
  ropeInvFreq,
} from "../io/config.ts";
import { type Dtype, f32ToBf16Bytes } from "../io/safetensors.ts";
import { adamwAll } from "../kernels/adamw.ts";
import {
  buildTokenIndex,
  embedBackward,
  rmsnormBackward,
  softmaxXentBackward,
} from "../kernels/backward.ts";
import { uploadCodeIndex } from "../kernels/codebook.ts";
import { add } from "../kernels/elementwise.ts";
import { checkIds, embed } from "../kernels/embedding.ts";
import { nll } from "../kernels/loss.ts";
import { matmul } from "../kernels/matmul.ts";
import { rmsnorm } from "../kernels/norm.ts";
import { ropeTables } from "../kernels/rope.ts";
import { transpose as transposeGpu } from "../kernels/transpose.ts";
import { backwardBlock, BackwardScratch } from "../model/backward.ts";
import {
  BlockScratch,
  type DenseBlockWeights,
  forwardBlock,
  type KeptActivations,
} from "../model/block.ts";
import { transpose } from "../util/matrix.ts";
import { Rng } from "../util/rng.ts";

export interface TrainerOptions {
  /** Tokens per window (each window is given as seqlen + 1 ids: inputs and next-token targets). */
  seqlen: number;
  /** Seeds the initialization. */
  seed: number;
  /** Standard deviation of the normal init of embeddings and linears (default 0.02). */
  initStd?: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** Decoupled weight decay of linears and embeddings (norm weights are not decayed). */
  weightDecay?: number;
}

/** One trained tensor on the GPU with its gradient and AdamW moments. */
interface Param {
  /** HF tensor name. */
  name: string;
  /** HF shape. */
  shape: number[];
  /** Stored transposed (W^T [in, out]) on the GPU; HF stores [out, in]. */
  transposed: boolean;
  t: Tensor;
  grad: Tensor;
  m: Tensor;
  v: Tensor;
  decay: boolean;
}

export class Trainer {
  readonly T: number;
  /** Optimizer steps taken. */
  steps = 0;
  private readonly params: Param[] = [];
  private readonly byName = new Map<string, Param>();
  private readonly blocks: DenseBlockWeights[] = [];
  /** W [out, in] copies of every linear for backwardBlock, refreshed after each step. */
  private readonly wCopies: Record<LinearKind, Tensor>[] = [];
  private lmHeadW!: Tensor;
  private readonly buf: Record<string, Tensor> = {};
  private layerIn: Tensor[] = [];
  private keep!: KeptActivations;
  private scratch!: BlockScratch;
  private bs!: BackwardScratch;
  private targets: Tensor | null = null;
  private nllOut: Tensor | null = null;
  private readonly beta1: number;
  private readonly beta2: number;
  private readonly eps: number;
  private readonly wd: number;

  private constructor(readonly gpu: Gpu, readonly cfg: ModelConfig, opts: TrainerOptions) {
    this.T = opts.seqlen;
    this.beta1 = opts.beta1 ?? 0.9;
    this.beta2 = opts.beta2 ?? 0.95;
    this.eps = opts.eps ?? 1e-8;
    this.wd = opts.weightDecay ?? 0.1;
  }

  /** A freshly initialized model: normal(0, std) linears and embeddings, unit norm weights. */
  static async create(gpu: Gpu, cfg: ModelConfig, opts: TrainerOptions): Promise<Trainer> {
    const init = initialWeights(cfg, opts.seed, opts.initStd ?? 0.02);
    return await Trainer.fromWeights(gpu, cfg, opts, init);
  }

  /** A trainer starting from given HF-layout f32 weights (every tensor of expectedTensors). */
  static async fromWeights(
    gpu: Gpu,
    cfg: ModelConfig,
    opts: TrainerOptions,
    weights: Map<string, Float32Array>,
  ): Promise<Trainer> {
    if (cfg.tieEmbeddings) throw new Error("Trainer: tied embeddings are not supported");
    const tr = new Trainer(gpu, cfg, opts);
    await tr.setup(weights);
    return tr;
  }

  private async setup(weights: Map<string, Float32Array>): Promise<void> {
    const gpu = this.gpu, cfg = this.cfg, T = this.T;
    const linear = new Map<string, { in: number; out: number }>();
    for (let l = 0; l < cfg.layers; l++) {
      for (const lin of linearNames(l, cfg)) linear.set(lin.name, lin);
    }
    for (const { name, shape } of expectedTensors(cfg)) {
      const w = weights.get(name);
      if (!w || w.length !== shape.reduce((a, b) => a * b, 1)) {
        throw new Error(`Trainer: weights lack ${name} [${shape}]`);
      }
      const lin = linear.get(name) ??
        (name === "lm_head.weight" ? { in: cfg.hidden, out: cfg.vocab } : null);
      const transposed = lin !== null;
      const data = lin ? transpose(w, lin.out, lin.in) : w;
      const gShape = lin ? [lin.in, lin.out] : shape;
      const p: Param = {
        name,
        shape,
        transposed,
        t: await Tensor.from(gpu, data, gShape, name),
        grad: Tensor.empty(gpu, gShape, `grad ${name}`),
        m: await Tensor.from(gpu, new Float32Array(data.length), gShape, `m ${name}`),
        v: await Tensor.from(gpu, new Float32Array(data.length), gShape, `v ${name}`),
        decay: shape.length === 2,
      };
      this.params.push(p);
      this.byName.set(name, p);
    }
    for (let l = 0; l < cfg.layers; l++) {
      const w = {} as Record<LinearKind, Tensor>, copies = {} as Record<LinearKind, Tensor>;
      for (const lin of linearNames(l, cfg)) {
        w[lin.kind] = this.byName.get(lin.name)!.t;
        copies[lin.kind] = Tensor.empty(gpu, [lin.out, lin.in], `W ${lin.name}`);
      }
      const pre = `model.layers.${l}`;
      this.blocks.push({
        layer: l,
        w,
        inputNorm: this.byName.get(`${pre}.input_layernorm.weight`)!.t,
        postNorm: this.byName.get(`${pre}.post_attention_layernorm.weight`)!.t,
      });
      this.wCopies.push(copies);
    }
    this.lmHeadW = Tensor.empty(gpu, [cfg.vocab, cfg.hidden], "W lm_head");
    this.refreshCopies();

    const H = cfg.hidden, V = cfg.vocab;
    const e = (
      name: string,
      shape: number[],
      dtype: "f32" | "u32" = "f32",
    ) => (this.buf[name] = Tensor.empty(gpu, shape, `train.${name}`, dtype));
    for (const name of ["x", "y", "hF", "dhF", "dA", "dB"]) e(name, [H, T]);
    e("hTok", [T, H]);
    e("logits", [T, V]);
    e("dlT", [V, T]);
    e("rstd", [T]);
    e("ids", [T], "u32");
    this.layerIn = Array.from(
      { length: cfg.layers },
      (_, l) => Tensor.empty(gpu, [H, T], `in L${l}`),
    );
    this.keep = {
      xIn: Tensor.empty(gpu, [H, T], "keep.xIn"),
      h1: Tensor.empty(gpu, [H, T], "keep.h1"),
      x2: Tensor.empty(gpu, [H, T], "keep.x2"),
      g: Tensor.empty(gpu, [cfg.intermediate, T], "keep.g"),
    };
    this.scratch = await BlockScratch.create(gpu, cfg, 1, T, ropeTables(ropeInvFreq(cfg), T));
    this.bs = new BackwardScratch(gpu, cfg, T, this.scratch.headGroup);
    await gpu.sync();
  }

  /** Number of trained values. */
  get parameterCount(): number {
    return this.params.reduce((a, p) => a + p.t.size, 0);
  }

  /**
   * Clears the gradients, then accumulates those of the mean next-token NLL over `windows`
   * (each seqlen + 1 ids). Returns that mean NLL (f64 sum of the per-token values).
   */
  async computeGradients(windows: Int32Array[]): Promise<number> {
    const gpu = this.gpu, T = this.T, W = windows.length;
    if (W === 0) throw new Error("computeGradients: no windows");
    for (const w of windows) {
      if (w.length !== T + 1) {
        throw new Error(`computeGradients: a window has ${w.length} ids, not ${T + 1}`);
      }
      checkIds(w, this.cfg.vocab);
    }
    if (!this.targets || this.targets.size < W * T) {
      this.targets?.release();
      this.nllOut?.release();
      this.targets = Tensor.empty(gpu, [W * T], "train.targets", "u32");
      this.nllOut = Tensor.empty(gpu, [W * T], "train.nll");
    }
    for (const p of this.params) gpu.clear(p.grad.buffer);
    const tg = new Uint32Array(W * T);
    windows.forEach((w, i) => tg.set(w.subarray(1), i * T));
    await gpu.write(this.targets.buffer, tg);
    for (let i = 0; i < W; i++) await this.window(windows[i].subarray(0, T), i, 1 / (W * T));
    const values = new Float32Array(await gpu.read(this.nllOut!.buffer, 0, W * T * 4));
    let sum = 0;
    for (const v of values) sum += v;
    return sum / (W * T);
  }

  /** One AdamW step with the accumulated gradients, then the W copies are refreshed. */
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
    this.refreshCopies();
  }

  /** computeGradients then applyUpdate; returns the mean NLL before the update. */
  async step(windows: Int32Array[], lr: number): Promise<number> {
    const loss = await this.computeGradients(windows);
    this.applyUpdate(lr);
    return loss;
  }

  /** The gradient of one tensor in HF layout (after computeGradients). */
  async gradient(name: string): Promise<Float32Array> {
    const p = this.param(name);
    return this.toHf(p, await p.grad.toF32());
  }

  /** Every weight in HF layout, f32. */
  async weights(): Promise<Map<string, Float32Array>> {
    const out = new Map<string, Float32Array>();
    for (const p of this.params) out.set(p.name, this.toHf(p, await p.t.toF32()));
    return out;
  }

  /** The weights as BF16 safetensors entries with HF names, in HF tensor order. */
  async bf16Tensors(): Promise<
    { name: string; dtype: Dtype; shape: number[]; data: Uint8Array }[]
  > {
    const w = await this.weights();
    return this.params.map((p) => ({
      name: p.name,
      dtype: "BF16" as Dtype,
      shape: p.shape,
      data: f32ToBf16Bytes(w.get(p.name)!),
    }));
  }

  release(): void {
    for (const p of this.params) for (const t of [p.t, p.grad, p.m, p.v]) t.release();
    for (const c of this.wCopies) for (const t of Object.values(c)) t.release();
    this.lmHeadW.release();
    for (const t of [...Object.values(this.buf), ...this.layerIn, ...Object.values(this.keep)]) {
      t.release();
    }
    this.targets?.release();
    this.nllOut?.release();
    this.scratch.release();
    this.bs.release();
  }

  private param(name: string): Param {
    const p = this.byName.get(name);
    if (!p) throw new Error(`Trainer: no tensor ${name}`);
    return p;
  }

  private toHf(p: Param, data: Float32Array): Float32Array {
    return p.transposed ? transpose(data, p.t.shape[0], p.t.shape[1]) : data;
  }

  private refreshCopies(): void {
    const cfg = this.cfg;
    for (let l = 0; l < cfg.layers; l++) {
      for (const lin of linearNames(l, cfg)) {
        transposeGpu(
          this.gpu,
          this.blocks[l].w[lin.kind].all,
          this.wCopies[l][lin.kind].all,
          lin.in,
          lin.out,
        );
      }
    }
    transposeGpu(
      this.gpu,
      this.param("lm_head.weight").t.all,
      this.lmHeadW.all,
      cfg.hidden,
      cfg.vocab,
    );
  }

  /** Forward and backward of one window (ids [T]); targets are rows wi*T .. of this.targets. */
  private async window(ids: Int32Array, wi: number, scale: number): Promise<void> {
    const gpu = this.gpu, cfg = this.cfg, T = this.T, H = cfg.hidden, V = cfg.vocab;
    const b = this.buf, eps = cfg.rmsNormEps;
    const emb = this.param("model.embed_tokens.weight");
    const head = this.param("lm_head.weight");
    const norm = this.param("model.norm.weight");
    const targets = this.targets!.all, nllOut = this.nllOut!.all;
    const bytes = H * T * 4;
    await gpu.write(b.ids.buffer, Uint32Array.from(ids));
    const tokens = await uploadCodeIndex(gpu, buildTokenIndex(ids, V, H));

    // Forward, storing each layer's input.
    embed(gpu, emb.t.all, b.ids.all, b.x.all, V, H, T);
    for (let l = 0; l < cfg.layers; l++) {
      gpu.copy(b.x.buffer, 0, this.layerIn[l].buffer, 0, bytes);
      forwardBlock(gpu, this.blocks[l], b.x, this.scratch);
    }
    rmsnorm(gpu, b.x.all, norm.t.all, b.hF.all, H, T, eps);
    // logits [T, V] = hF^T lm_head^T
    matmul(gpu, {
      M: T,
      N: V,
      K: H,
      a: b.hF.buffer,
      lda: T,
      b: head.t.buffer,
      ldb: V,
      c: b.logits.buffer,
      ldc: V,
    });
    nll(gpu, b.logits.all, targets, nllOut, T, V, wi * T);
    softmaxXentBackward(gpu, b.logits.all, targets, b.logits.all, T, V, scale, wi * T);

    // LM head: d lm_head^T [H, V] += hF dlogits; dhF [H, T] = lm_head^T... via W [V, H].
    transposeGpu(gpu, b.hF.all, b.hTok.all, H, T);
    matmul(gpu, {
      M: H,
      N: V,
      K: T,
      a: b.hTok.buffer,
      lda: H,
      b: b.logits.buffer,
      ldb: V,
      c: head.grad.buffer,
      ldc: V,
      accumulate: true,
    });
    transposeGpu(gpu, b.logits.all, b.dlT.all, T, V);
    matmul(gpu, {
      M: H,
      N: T,
      K: V,
      a: this.lmHeadW.buffer,
      lda: H,
      b: b.dlT.buffer,
      ldb: T,
      c: b.dhF.buffer,
      ldc: T,
    });
    rmsnormBackward(gpu, b.x.all, norm.t.all, b.dhF.all, b.dA.all, H, T, eps, {
      dw: norm.grad.all,
      rstd: b.rstd.all,
    });

    // Blocks in reverse: recompute the forward with keep, then the backward.
    let dy = b.dA, dx = b.dB;
    for (let l = cfg.layers - 1; l >= 0; l--) {
      const pre = `model.layers.${l}`;
      const grads = {} as Record<LinearKind, Param>;
      for (const lin of linearNames(l, cfg)) grads[lin.kind] = this.param(lin.name);
      gpu.copy(this.layerIn[l].buffer, 0, b.y.buffer, 0, bytes);
      forwardBlock(gpu, this.blocks[l], b.y, this.scratch, this.keep);
      backwardBlock(gpu, this.blocks[l], this.scratch, this.keep, this.bs, dy, {
        w: this.wCopies[l],
        dx,
        dInputNorm: this.param(`${pre}.input_layernorm.weight`).grad,
        dPostNorm: this.param(`${pre}.post_attention_layernorm.weight`).grad,
        onWeightGrad: (kind: LinearKind, dwT: BufferRange) =>
          add(gpu, grads[kind].grad.all, dwT, grads[kind].t.size),
      });
      [dy, dx] = [dx, dy];
    }
    embedBackward(gpu, dy.all, tokens, emb.grad.all, { accumulate: true });
    tokens.release();
  }
}

/** HF-layout initial weights: normal(0, std), o/down scaled by 1/sqrt(2 layers), norms 1. */
export function initialWeights(
  cfg: ModelConfig,
  seed: number,
  std: number,
): Map<string, Float32Array> {
  const rng = new Rng(seed);
  const out = new Map<string, Float32Array>();
  const residual = std / Math.sqrt(2 * cfg.layers);
  for (const { name, shape } of expectedTensors(cfg)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const w = new Float32Array(n);
    if (shape.length === 1) {
      w.fill(1);
    } else {
      const s = /o_proj|down_proj/.test(name) ? residual : std;
      for (let i = 0; i < n; i++) w[i] = s * rng.normal();
    }
    out.set(name, w);
  }
  return out;
}
