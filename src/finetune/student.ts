// The student block of ClusComp finetuning on the GPU: codebooks (trained), codes (fixed),
// the decoded weights in both layouts, the forward with kept activations, the backward pass
// down to the codebook gradients, and the AdamW step. One window of T tokens per step.
import type { Gpu } from "../gpu/device.ts";
import { Tensor } from "../gpu/tensor.ts";
import { type LinearKind, linearNames, type ModelConfig } from "../io/config.ts";
import { adamw } from "../kernels/adamw.ts";
import { causalSoftmax } from "../kernels/attention.ts";
import {
  causalSoftmaxBackward,
  rmsnormBackward,
  ropeBackward,
  siluMulBackwardInPlace,
} from "../kernels/backward.ts";
import {
  codebookGrad,
  decodeCodebook,
  type GpuCodeIndex,
  prepareCodeIndex,
} from "../kernels/codebook.ts";
import { matmul } from "../kernels/matmul.ts";
import { transpose } from "../kernels/transpose.ts";
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

interface LinearState {
  kind: LinearKind;
  inDim: number;
  out: number;
  d: number;
  /** Entries over all splits. */
  entries: number;
  c: Tensor;
  m: Tensor;
  v: Tensor;
  dc: Tensor;
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

  private constructor(
    readonly gpu: Gpu,
    readonly cfg: ModelConfig,
    readonly T: number,
    readonly linears: LinearState[],
    readonly scratch: BlockScratch,
    inputNorm: Tensor,
    postNorm: Tensor,
  ) {
    const w = {} as BlockWeights["w"];
    for (const l of linears) w[l.kind] = l.wT;
    this.block = { layer: -1, w, inputNorm, postNorm };
    const H = cfg.hidden, I = cfg.intermediate, hd = cfg.headDim;
    const qd = cfg.heads * hd, kvd = cfg.kvHeads * hd;
    const e = (shape: number[], name: string) => Tensor.empty(gpu, shape, `student.${name}`);
    this.keep = {
      xIn: e([H, T], "xIn"),
      h1: e([H, T], "h1"),
      x2: e([H, T], "x2"),
      g: e([I, T], "g"),
    };
    const widest = Math.max(H, I, qd);
    let maxW = 0;
    for (const l of linears) maxW = Math.max(maxW, l.inDim * l.out);
    const hs = scratch.headGroup;
    const grads: [string, number[]][] = [
      ["y", [H, T]],
      ["dy", [H, T]],
      ["dx2", [H, T]],
      ["dh", [H, T]],
      ["da", [I, T]],
      ["do", [qd, T]],
      ["doTok", [T, qd]],
      ["dq", [qd, T]],
      ["dk", [kvd, T]],
      ["dv", [T, kvd]],
      ["vT", [kvd, T]],
      ["tokA", [T, widest]],
      ["tokB", [T, widest]],
      ["p2", [hs, T, T]],
      ["dwT", [maxW]],
      ["sq", [T]],
    ];
    for (const [name, shape] of grads) this.g[name] = e(shape, name);
  }

  static async create(
    gpu: Gpu,
    cfg: ModelConfig,
    T: number,
    books: CodebookData[],
    inputNorm: Float32Array,
    postNorm: Float32Array,
    rope: { cos: Float32Array; sin: Float32Array },
  ): Promise<StudentBlock> {
    const linears: LinearState[] = [];
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
      const t = (name: string) => Tensor.empty(gpu, [size], `${lin.kind}.${name}`);
      linears.push({
        kind: lin.kind,
        inDim: lin.in,
        out: lin.out,
        d: b.d,
        entries,
        c: await Tensor.from(gpu, b.centroids, [size], `${lin.kind}.codebook`),
        m: t("adam_m"),
        v: t("adam_v"),
        dc: t("grad"),
        codes: await Tensor.from(gpu, codes, [codes.length], `${lin.kind}.codes`),
        index: await prepareCodeIndex(gpu, codes, entries, lin.in, lin.out, b.d),
        wT: Tensor.empty(gpu, [lin.in, lin.out], `${lin.kind}.wT`),
        w: Tensor.empty(gpu, [lin.out, lin.in], `${lin.kind}.w`),
      });
    }
    const scratch = await BlockScratch.create(gpu, cfg, 1, T, rope);
    if (scratch.mlpChunk < T) {
      throw new Error(
        `finetune: [${cfg.intermediate}, ${T}] activations exceed one ${gpu.limits.maxBinding}-byte ` +
          `binding on this adapter; lower --calib-seqlen`,
      );
    }
    const s = new StudentBlock(
      gpu,
      cfg,
      T,
      linears,
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
      await this.gpu.write(l.c.buffer, state.get(`${l.kind}.codebook`)!);
      await this.gpu.write(l.m.buffer, state.get(`${l.kind}.adam_m`)!);
      await this.gpu.write(l.v.buffer, state.get(`${l.kind}.adam_v`)!);
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
      await this.gpu.write(l.c.buffer, books.get(`${l.kind}.codebook`)!);
    }
    this.decode();
  }

  /** W^T and W from the current codebooks. */
  private decode(): void {
    for (const l of this.linears) {
      decodeCodebook(this.gpu, l.c.all, l.codes.all, l.wT.all, l.inDim, l.out, l.d);
      transpose(this.gpu, l.wT.all, l.w.all, l.inDim, l.out);
    }
  }

  /** y = block(x) for x [H, T] (uploaded); returns the output tensor (valid until the next call). */
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
    const gpu = this.gpu, cfg = this.cfg, s = this.scratch, k = this.keep, g = this.g;
    const T = this.T, H = cfg.hidden, I = cfg.intermediate, hd = cfg.headDim;
    const qd = cfg.heads * hd, kvd = cfg.kvHeads * hd, group = cfg.heads / cfg.kvHeads;
    const L = Object.fromEntries(this.linears.map((l) => [l.kind, l])) as Record<
      LinearKind,
      LinearState
    >;
    // dX [in, T] (+)= W^T-contraction: At = W [out, in], B = dY [out, T].
    const back = (l: LinearState, dY: Tensor, dX: Tensor, accumulate = false) =>
      matmul(gpu, {
        M: l.inDim,
        N: T,
        K: l.out,
        a: l.w.buffer,
        lda: l.inDim,
        b: dY.buffer,
        ldb: T,
        c: dX.buffer,
        ldc: T,
        accumulate,
      });
    // dC from dW^T [in, out] = X_tok^T dY_tok, with X and dY given feature-major (transposed here)
    // or already token-major.
    const grad = (l: LinearState, xTok: Tensor, dyTok: Tensor) => {
      matmul(gpu, {
        M: l.inDim,
        N: l.out,
        K: T,
        a: xTok.buffer,
        lda: l.inDim,
        b: dyTok.buffer,
        ldb: l.out,
        c: g.dwT.buffer,
        ldc: l.out,
      });
      codebookGrad(
        gpu,
        { buffer: g.dwT.buffer, offset: 0, size: l.inDim * l.out * 4 },
        l.index,
        l.dc.all,
      );
    };
    const tok = (src: Tensor, rows: number, dst: Tensor) =>
      transpose(gpu, src.all, { buffer: dst.buffer, offset: 0, size: rows * T * 4 }, rows, T);

    // MLP: y = x2 + Wd a, a = silu(g) * u (a is in s.gate, u in s.up, h2 in s.h).
    tok(g.dy, H, g.tokB);
    tok(s.gate, I, g.tokA);
    grad(L.down, g.tokA, g.tokB);
    back(L.down, g.dy, g.da);
    // In place: the kept g becomes dg, the scratch up becomes du.
    siluMulBackwardInPlace(gpu, k.g.all, s.up.all, g.da.all, I * T);
    back(L.gate, k.g, g.dh);
    back(L.up, s.up, g.dh, true);
    tok(s.h, H, g.tokA);
    tok(k.g, I, g.tokB);
    grad(L.gate, g.tokA, g.tokB);
    tok(s.up, I, g.tokB);
    grad(L.up, g.tokA, g.tokB);
    // dx2 = dy + rmsnorm'(x2) dh2
    gpu.copy(g.dy.buffer, 0, g.dx2.buffer, 0, g.dy.bytes);
    rmsnormBackward(
      gpu,
      k.x2.all,
      this.block.postNorm.all,
      g.dh.all,
      g.dx2.all,
      H,
      T,
      cfg.rmsNormEps,
      {
        accumulate: true,
      },
    );
    // o projection: x2 = x + Wo o.
    tok(s.o, qd, g.tokA);
    tok(g.dx2, H, g.tokB);
    grad(L.o, g.tokA, g.tokB);
    back(L.o, g.dx2, g.do);
    transpose(gpu, g.do.all, g.doTok.all, qd, T);

    // Attention core, recomputing P per head group (memory over time).
    transpose(gpu, s.v.all, g.vT.all, T, kvd);
    tok(s.q, qd, g.tokA); // q token-major [T, qd]
    tok(s.k, kvd, g.tokB); // k token-major [T, kvd]
    const scale = 1 / Math.sqrt(hd);
    for (let h0 = 0; h0 < cfg.heads; h0 += s.headGroup) {
      const hs = Math.min(s.headGroup, cfg.heads - h0);
      const sc = s.scores.buffer, p2 = g.p2.buffer;
      // P^T [hs, j, i] as in the forward.
      matmul(gpu, {
        M: T,
        N: T,
        K: hd,
        a: s.k.buffer,
        aOffset: Math.floor(h0 / group) * hd * T,
        lda: T,
        b: s.q.buffer,
        bOffset: h0 * hd * T,
        ldb: T,
        c: sc,
        ldc: T,
        batch: hs,
        aBatchStride: hd * T,
        aBatchDiv: group,
        bBatchStride: hd * T,
        cBatchStride: T * T,
      });
      causalSoftmax(gpu, s.scores.all, hs, T, scale);
      // P [hs, i, j]; dV[j, kv(h)] (+)= sum_i P[i, j] dO[i, h]
      transpose(
        gpu,
        { buffer: sc, offset: 0, size: hs * T * T * 4 },
        {
          buffer: p2,
          offset: 0,
          size: hs * T * T * 4,
        },
        T,
        T,
        hs,
      );
      for (let h = h0; h < h0 + hs; h++) {
        const kv = Math.floor(h / group);
        matmul(gpu, {
          M: T,
          N: hd,
          K: T,
          a: p2,
          aOffset: (h - h0) * T * T,
          lda: T,
          b: g.doTok.buffer,
          bOffset: h * hd,
          ldb: qd,
          c: g.dv.buffer,
          cOffset: kv * hd,
          ldc: kvd,
          accumulate: h % group !== 0,
        });
      }
      // dP^T [hs, j, i] = sum_d V[j, d] dO^T[d, i] (into p2, P is no longer needed)
      matmul(gpu, {
        M: T,
        N: T,
        K: hd,
        a: g.vT.buffer,
        aOffset: Math.floor(h0 / group) * hd * T,
        lda: T,
        b: g.do.buffer,
        bOffset: h0 * hd * T,
        ldb: T,
        c: p2,
        ldc: T,
        batch: hs,
        aBatchStride: hd * T,
        aBatchDiv: group,
        bBatchStride: hd * T,
        cBatchStride: T * T,
      });
      causalSoftmaxBackward(
        gpu,
        s.scores.all,
        { buffer: p2, offset: 0, size: hs * T * T * 4 },
        hs,
        T,
        scale,
      );
      // dQ^T[h] = sum_j K[j, d] dS^T[j, i]
      matmul(gpu, {
        M: hd,
        N: T,
        K: T,
        a: g.tokB.buffer,
        aOffset: Math.floor(h0 / group) * hd,
        lda: kvd,
        b: p2,
        ldb: T,
        c: g.dq.buffer,
        cOffset: h0 * hd * T,
        ldc: T,
        batch: hs,
        aBatchStride: hd,
        aBatchDiv: group,
        bBatchStride: T * T,
        cBatchStride: hd * T,
      });
      // dS [hs, i, j] into the scores buffer, then dK^T[kv] (+)= sum_i Q[i, d] dS[i, j]
      transpose(
        gpu,
        { buffer: p2, offset: 0, size: hs * T * T * 4 },
        {
          buffer: sc,
          offset: 0,
          size: hs * T * T * 4,
        },
        T,
        T,
        hs,
      );
      for (let h = h0; h < h0 + hs; h++) {
        const kv = Math.floor(h / group);
        matmul(gpu, {
          M: hd,
          N: T,
          K: T,
          a: g.tokA.buffer,
          aOffset: h * hd,
          lda: qd,
          b: sc,
          bOffset: (h - h0) * T * T,
          ldb: T,
          c: g.dk.buffer,
          cOffset: kv * hd * T,
          ldc: T,
          accumulate: h % group !== 0,
        });
      }
    }
    ropeBackward(gpu, g.dq.all, s.cos.all, s.sin.all, cfg.heads, hd, T);
    ropeBackward(gpu, g.dk.all, s.cos.all, s.sin.all, cfg.kvHeads, hd, T);
    // q, k, v projections from h1.
    tok(k.h1, H, g.tokA);
    grad(L.v, g.tokA, g.dv);
    tok(g.dq, qd, g.tokB);
    grad(L.q, g.tokA, g.tokB);
    tok(g.dk, kvd, g.tokB);
    grad(L.k, g.tokA, g.tokB);
  }

  /** One AdamW step on every codebook. */
  update(opt: AdamWSettings): void {
    this.step++;
    for (const l of this.linears) {
      adamw(this.gpu, l.c.all, l.dc.all, l.m.all, l.v.all, l.entries * l.d, {
        ...opt,
        step: this.step,
      });
    }
    this.decode();
  }

  get steps(): number {
    return this.step;
  }

  release(): void {
    for (const l of this.linears) {
      for (const t of [l.c, l.m, l.v, l.dc, l.codes, l.wT, l.w]) t.release();
      l.index.release();
    }
    for (const t of Object.values(this.keep)) t.release();
    for (const t of Object.values(this.g)) t.release();
    this.block.inputNorm.release();
    this.block.postNorm.release();
    this.scratch.release();
  }
}
