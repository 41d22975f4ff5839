// The student block of ClusComp finetuning on the GPU: codebooks (trained), codes (fixed),
// the decoded weights in both layouts, the forward with kept activations, the backward pass
// down to the codebook gradients, and the AdamW step. B windows of T tokens per step, as one
// dispatch sequence over N = B * T columns (feature-major [features, N], window w in columns
// w * T .. w * T + T - 1; attention stays within each window).
// The seven codebooks (and their AdamW moments and gradients) live in one buffer each, every
// linear's at an aligned offset, so one AdamW dispatch steps them all; one dispatch per linear
// decodes W^T and W together.
import type { BufferRange, Gpu } from "../gpu/device.ts";
import { Tensor } from "../gpu/tensor.ts";
import { type LinearKind, linearNames, type ModelConfig } from "../io/config.ts";
import { adamw } from "../kernels/adamw.ts";
import { codebookGrad, type GpuCodeIndex, prepareCodeIndex } from "../kernels/codebook.ts";
import { decodeCodebookBoth } from "../kernels/codebook_decode.ts";
import { backwardBlock, BackwardScratch } from "../model/backward.ts";
import {
  BlockScratch,
  type BlockWeights,
  forwardBlock,
  type KeptActivations,
} from "../model/block.ts";

/** A linear's codebook as stored in a checkpoint unit: f32 centroids and codes. */
export interface CodebookData {
  kind: LinearKind;
  /** [splits * n, d] f32. */
  centroids: Float32Array;
  /** [in * cols] codes, each < n (the split's own codebook). */
  codes: ArrayLike<number>;
  n: number;
  d: number;
  splits: number;
}

/** A linear's range of a shared buffer, readable on its own. */
interface Slice extends BufferRange {
  offset: number;
  size: number;
  toF32(): Promise<Float32Array>;
}

interface LinearState {
  kind: LinearKind;
  inDim: number;
  out: number;
  d: number;
  /** Entries over all splits. */
  entries: number;
  /** Its ranges of the shared codebook, AdamW moment and gradient buffers ([entries * d]). */
  c: Slice;
  m: Slice;
  v: Slice;
  dc: Slice;
  codes: Tensor;
  index: GpuCodeIndex;
  /** W^T [in, out] (forward) and W [out, in] (backward). */
  wT: Tensor;
  w: Tensor;
}

export interface AdamWSettings {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

export class StudentBlock {
  readonly block: BlockWeights;
  private step = 0;
  private readonly keep: KeptActivations;
  private readonly g: Record<string, Tensor> = {};
  private readonly bs: BackwardScratch;

  private constructor(
    readonly gpu: Gpu,
    readonly cfg: ModelConfig,
    readonly T: number,
    readonly windows: number,
    readonly linears: LinearState[],
    /** Codebooks, AdamW m and v, and gradients of all linears, each [total] (zero padding). */
    private readonly flat: { c: Tensor; m: Tensor; v: Tensor; dc: Tensor; total: number },
    readonly scratch: BlockScratch,
    inputNorm: Tensor,
    postNorm: Tensor,
  ) {
    const w = {} as BlockWeights["w"];
    for (const l of linears) w[l.kind] = l.wT;
    this.block = { layer: -1, w, inputNorm, postNorm };
    const H = cfg.hidden, I = cfg.intermediate, N = windows * T;
    this.bs = new BackwardScratch(gpu, cfg, T, scratch.headGroup, windows);
    const e = (shape: number[], name: string) => Tensor.empty(gpu, shape, `student.${name}`);
    this.keep = {
      xIn: e([H, N], "xIn"),
      h1: e([H, N], "h1"),
      x2: e([H, N], "x2"),
      g: e([I, N], "g"),
    };
    const grads: [string, number[]][] = [["y", [H, N]], ["dy", [H, N]], ["sq", [N]]];
    for (const [name, shape] of grads) this.g[name] = e(shape, name);
  }

  /** A student for steps of `windows` windows of T tokens (rope: tables for T positions). */
  static async create(
    gpu: Gpu,
    cfg: ModelConfig,
    T: number,
    books: CodebookData[],
    inputNorm: Float32Array,
    postNorm: Float32Array,
    rope: { cos: Float32Array; sin: Float32Array },
    windows = 1,
  ): Promise<StudentBlock> {
    if (!(Number.isInteger(windows) && windows >= 1)) {
      throw new Error(`student: ${windows} windows per step; need a positive integer`);
    }
    const linears: LinearState[] = [];
    // Each linear's codebook starts at an offset aligned for a storage binding.
    const alignF = gpu.limits.align / 4;
    let total = 0;
    const at: number[] = [];
    for (const lin of linearNames(0, cfg)) {
      const b = books.find((x) => x.kind === lin.kind)!;
      at.push(total);
      total += Math.ceil((b.splits * b.n * b.d) / alignF) * alignF;
    }
    const flatC = new Float32Array(total);
    const flat = {
      c: Tensor.empty(gpu, [total], "student.codebooks"),
      m: Tensor.empty(gpu, [total], "student.adam_m"),
      v: Tensor.empty(gpu, [total], "student.adam_v"),
      dc: Tensor.empty(gpu, [total], "student.grad"),
      total,
    };
    for (const lin of linearNames(0, cfg)) {
      const b = books.find((x) => x.kind === lin.kind)!;
      const cols = Math.ceil(lin.out / b.d);
      const rowsPer = lin.in / b.splits;
      // One codebook of splits * n entries: split s's codes move up by s * n.
      const codes = new Uint32Array(lin.in * cols);
      for (let i = 0; i < codes.length; i++) {
        codes[i] = b.codes[i] + Math.floor(i / (rowsPer * cols)) * b.n;
      }
      const entries = b.splits * b.n;
      const size = entries * b.d;
      const off = at[linears.length];
      flatC.set(b.centroids.subarray(0, size), off);
      const r = (t: Tensor): Slice => ({
        buffer: t.buffer,
        offset: off * 4,
        size: size * 4,
        toF32: async () => new Float32Array(await gpu.read(t.buffer, off * 4, size * 4)),
      });
      linears.push({
        kind: lin.kind,
        inDim: lin.in,
        out: lin.out,
        d: b.d,
        entries,
        c: r(flat.c),
        m: r(flat.m),
        v: r(flat.v),
        dc: r(flat.dc),
        codes: await Tensor.from(gpu, codes, [codes.length], `${lin.kind}.codes`),
        index: await prepareCodeIndex(gpu, codes, entries, lin.in, lin.out, b.d),
        wT: Tensor.empty(gpu, [lin.in, lin.out], `${lin.kind}.wT`),
        w: Tensor.empty(gpu, [lin.out, lin.in], `${lin.kind}.w`),
      });
    }
    await gpu.write(flat.c.buffer, flatC);
    // Dense linears one window (T columns) a dispatch: see BlockScratch.linearCols.
    const scratch = await BlockScratch.create(gpu, cfg, windows, T, rope, { linearCols: T });
    if (scratch.mlpChunk < windows * T) {
      scratch.release();
      throw new Error(
        `finetune: [${cfg.intermediate}, ${windows} x ${T}] activations exceed one ` +
          `${gpu.limits.maxBinding}-byte binding on this adapter; lower --finetune-batch or ` +
          `--calib-seqlen`,
      );
    }
    const s = new StudentBlock(
      gpu,
      cfg,
      T,
      windows,
      linears,
      flat,
      scratch,
      await Tensor.from(gpu, inputNorm, [cfg.hidden], "student.input_norm"),
      await Tensor.from(gpu, postNorm, [cfg.hidden], "student.post_norm"),
    );
    s.decode();
    return s;
  }

  /** Restores codebooks and AdamW state from a checkpoint. */
  async load(state: Map<string, Float32Array>, step: number): Promise<void> {
    for (const l of this.linears) {
      for (const [r, name] of [[l.c, "codebook"], [l.m, "adam_m"], [l.v, "adam_v"]] as const) {
        await this.put(r, state.get(`${l.kind}.${name}`)!);
      }
    }
    this.step = step;
    this.decode();
  }

  /** Codebooks and AdamW state, for checkpoints. */
  async state(): Promise<{ tensors: Map<string, Float32Array>; step: number }> {
    const tensors = new Map<string, Float32Array>();
    for (const l of this.linears) {
      tensors.set(`${l.kind}.codebook`, await l.c.toF32());
      tensors.set(`${l.kind}.adam_m`, await l.m.toF32());
      tensors.set(`${l.kind}.adam_v`, await l.v.toF32());
    }
    return { tensors, step: this.step };
  }

  /** Writes codebooks (only) back, e.g. the best epoch's. */
  async setCodebooks(books: Map<string, Float32Array>): Promise<void> {
    for (const l of this.linears) {
      await this.put(l.c, books.get(`${l.kind}.codebook`)!);
    }
    this.decode();
  }

  /** Writes one linear's range of a shared buffer (exactly its size). */
  private async put(r: Slice, data: Float32Array): Promise<void> {
    if (data.byteLength !== r.size) {
      throw new Error(`student: ${data.byteLength} bytes for a ${r.size}-byte codebook range`);
    }
    await this.gpu.write(r.buffer, data, r.offset);
  }

  /** W^T and W from the current codebooks: one dispatch per linear. */
  private decode(): void {
    for (const l of this.linears) {
      decodeCodebookBoth(this.gpu, l.c, l.codes.all, l.wT.all, l.w.all, l.inDim, l.out, l.d);
    }
  }

  /**
   * y = block(x) for x [H, N] (uploaded, N = windows * T); returns the output tensor (valid until
   * the next call).
   */
  forward(x: Tensor, keep: boolean): Tensor {
    const y = this.g.y;
    this.gpu.copy(x.buffer, 0, y.buffer, 0, x.bytes);
    forwardBlock(this.gpu, this.block, y, this.scratch, keep ? this.keep : undefined);
    return y;
  }

  /** The dy buffer the caller fills before backward(). */
  get dy(): Tensor {
    return this.g.dy;
  }

  get sq(): Tensor {
    return this.g.sq;
  }

  /** Codebook gradients from dy, after forward(x, true). */
  backward(): void {
    const dc = Object.fromEntries(this.linears.map((l) => [l.kind, l])) as Record<
      LinearKind,
      LinearState
    >;
    const w = Object.fromEntries(this.linears.map((l) => [l.kind, l.w])) as Record<
      LinearKind,
      Tensor
    >;
    backwardBlock(this.gpu, this.block, this.scratch, this.keep, this.bs, this.g.dy, {
      w,
      onWeightGrad: (kind, dwT) => codebookGrad(this.gpu, dwT, dc[kind].index, dc[kind].dc),
    });
  }

  /**
   * One AdamW step on every codebook: a single elementwise dispatch over the shared buffers
   * (the padding between linears stays zero: zero gradient, moments and parameters).
   */
  update(opt: AdamWSettings): void {
    this.step++;
    const f = this.flat;
    adamw(this.gpu, f.c.all, f.dc.all, f.m.all, f.v.all, f.total, { ...opt, step: this.step });
    this.decode();
  }

  get steps(): number {
    return this.step;
  }

  release(): void {
    for (const l of this.linears) {
      for (const t of [l.codes, l.wT, l.w]) t.release();
      l.index.release();
    }
    for (const t of [this.flat.c, this.flat.m, this.flat.v, this.flat.dc]) t.release();
    for (const t of Object.values(this.keep)) t.release();
    for (const t of Object.values(this.g)) t.release();
    this.bs.release();
    this.block.inputNorm.release();
    this.block.postNorm.release();
    this.scratch.release();
  }
}
