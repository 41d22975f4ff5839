// One Llama decoder block on the GPU: its weights, and its forward pass as kernel calls.
// Activations are feature-major: x^T [features, N] for N tokens (B windows of T tokens).
import type { Gpu } from "../gpu/device.ts";
import { Tensor } from "../gpu/tensor.ts";
import type { ModelConfig } from "../io/config.ts";
import { causalSoftmax } from "../kernels/attention.ts";
import { siluMul } from "../kernels/elementwise.ts";
import { matmul } from "../kernels/matmul.ts";
import { rmsnorm } from "../kernels/norm.ts";
import { rope } from "../kernels/rope.ts";
import { type LinearName, linearOf, LINEARS, type WeightSource } from "./weights.ts";

export interface BlockWeights {
  layer: number;
  /** W^T [in, out] per linear. */
  w: Record<LinearName, Tensor>;
  inputNorm: Tensor;
  postNorm: Tensor;
}

export async function uploadBlock(
  gpu: Gpu,
  cfg: ModelConfig,
  src: WeightSource,
  layer: number,
): Promise<BlockWeights> {
  const w = {} as Record<LinearName, Tensor>;
  for (const name of LINEARS) {
    const lin = linearOf(cfg, layer, name);
    w[name] = await Tensor.from(
      gpu,
      await src.linearT(layer, name),
      [lin.in, lin.out],
      `L${layer}.${name}`,
    );
  }
  const pre = `model.layers.${layer}`;
  return {
    layer,
    w,
    inputNorm: await Tensor.from(gpu, await src.tensor(`${pre}.input_layernorm.weight`), [
      cfg.hidden,
    ], `L${layer}.input_norm`),
    postNorm: await Tensor.from(gpu, await src.tensor(`${pre}.post_attention_layernorm.weight`), [
      cfg.hidden,
    ], `L${layer}.post_norm`),
  };
}

export function releaseBlock(b: BlockWeights): void {
  for (const t of Object.values(b.w)) t.release();
  b.inputNorm.release();
  b.postNorm.release();
}

/** Bytes a block's weights take on the GPU. */
export function blockBytes(cfg: ModelConfig): number {
  let n = 2 * cfg.hidden;
  for (const name of LINEARS) {
    const lin = linearOf(cfg, 0, name);
    n += lin.out * lin.in;
  }
  return n * 4;
}

/** Scratch activations for a pass over `windows` windows of `seqlen` tokens. */
export class BlockScratch {
  readonly n: number;
  /** Tokens per MLP chunk, so that [intermediate, chunk] fits one binding. */
  readonly mlpChunk: number;
  /** Heads per attention-score group, so that [heads, T, T] fits one binding. */
  readonly headGroup: number;
  readonly h: Tensor;
  readonly q: Tensor;
  readonly k: Tensor;
  readonly v: Tensor;
  readonly o: Tensor;
  readonly scores: Tensor;
  readonly gate: Tensor;
  readonly up: Tensor;
  readonly cos: Tensor;
  readonly sin: Tensor;

  private constructor(
    readonly gpu: Gpu,
    readonly cfg: ModelConfig,
    readonly windows: number,
    readonly seqlen: number,
    cos: Tensor,
    sin: Tensor,
  ) {
    const n = this.n = windows * seqlen;
    const qDim = cfg.heads * cfg.headDim, kvDim = cfg.kvHeads * cfg.headDim;
    ({ mlpChunk: this.mlpChunk, headGroup: this.headGroup } = BlockScratch.split(
      cfg,
      n,
      seqlen,
      gpu.limits.maxBinding,
    ));
    this.h = Tensor.empty(gpu, [cfg.hidden, n], "h");
    this.q = Tensor.empty(gpu, [qDim, n], "q");
    this.k = Tensor.empty(gpu, [kvDim, n], "k");
    this.v = Tensor.empty(gpu, [n, kvDim], "v");
    this.o = Tensor.empty(gpu, [qDim, n], "o");
    this.scores = Tensor.empty(gpu, [this.headGroup, seqlen, seqlen], "scores");
    this.gate = Tensor.empty(gpu, [cfg.intermediate, this.mlpChunk], "gate");
    this.up = Tensor.empty(gpu, [cfg.intermediate, this.mlpChunk], "up");
    this.cos = cos;
    this.sin = sin;
  }

  /** cos/sin tables are [windows*seqlen, headDim/2]: positions restart in every window. */
  static async create(
    gpu: Gpu,
    cfg: ModelConfig,
    windows: number,
    seqlen: number,
    table: { cos: Float32Array; sin: Float32Array },
  ): Promise<BlockScratch> {
    const half = cfg.headDim / 2;
    const cos = new Float32Array(windows * seqlen * half), sin = new Float32Array(cos.length);
    for (let w = 0; w < windows; w++) {
      cos.set(table.cos.subarray(0, seqlen * half), w * seqlen * half);
      sin.set(table.sin.subarray(0, seqlen * half), w * seqlen * half);
    }
    const n = windows * seqlen;
    return new BlockScratch(
      gpu,
      cfg,
      windows,
      seqlen,
      await Tensor.from(gpu, cos, [n, half], "rope.cos"),
      await Tensor.from(gpu, sin, [n, half], "rope.sin"),
    );
  }

  /**
   * Tokens per MLP chunk ([intermediate, chunk] fits one binding) and heads per attention-score
   * group ([heads, T, T] fits one binding) for n tokens in windows of seqlen.
   */
  static split(
    cfg: ModelConfig,
    n: number,
    seqlen: number,
    maxBinding: number,
  ): { mlpChunk: number; headGroup: number } {
    const maxFloats = Math.floor(maxBinding / 4);
    return {
      mlpChunk: Math.max(1, Math.min(n, Math.floor(maxFloats / cfg.intermediate))),
      headGroup: Math.max(1, Math.min(cfg.heads, Math.floor(maxFloats / (seqlen * seqlen)))),
    };
  }

  /** Bytes the scratch holds for these sizes (used by the memory plan). */
  static bytes(cfg: ModelConfig, windows: number, seqlen: number, maxBinding: number): number {
    const n = windows * seqlen;
    const qDim = cfg.heads * cfg.headDim, kvDim = cfg.kvHeads * cfg.headDim;
    const { mlpChunk: chunk, headGroup: group } = BlockScratch.split(cfg, n, seqlen, maxBinding);
    const floats = cfg.hidden * n + 2 * qDim * n + 2 * kvDim * n + group * seqlen * seqlen +
      2 * cfg.intermediate * chunk + n * cfg.headDim;
    return floats * 4;
  }

  release(): void {
    for (
      const t of [
        this.h,
        this.q,
        this.k,
        this.v,
        this.o,
        this.scores,
        this.gate,
        this.up,
        this.cos,
        this.sin,
      ]
    ) t.release();
  }
}

/**
 * Activations the backward pass needs besides what the scratch still holds afterwards
 * (q, k, v, o, h = h2, up, and gate = silu(g) * up).
 */
export interface KeptActivations {
  xIn: Tensor;
  h1: Tensor;
  x2: Tensor;
  g: Tensor;
}

/** x^T [hidden, N] <- block(x^T), in place; `keep` copies what backward needs. */
export function forwardBlock(
  gpu: Gpu,
  b: BlockWeights,
  x: Tensor,
  s: BlockScratch,
  keep?: KeptActivations,
): void {
  const cfg = s.cfg;
  const n = s.n, T = s.seqlen, hd = cfg.headDim, H = cfg.hidden, I = cfg.intermediate;
  const qDim = cfg.heads * hd, kvDim = cfg.kvHeads * hd;
  const group = cfg.heads / cfg.kvHeads;

  if (keep && s.mlpChunk < n) throw new Error("forwardBlock: keep needs the MLP in one chunk");
  if (keep) gpu.copy(x.buffer, 0, keep.xIn.buffer, 0, x.bytes);

  // Attention.
  rmsnorm(gpu, x.all, b.inputNorm.all, s.h.all, H, n, cfg.rmsNormEps);
  if (keep) gpu.copy(s.h.buffer, 0, keep.h1.buffer, 0, s.h.bytes);
  matmul(gpu, {
    M: qDim,
    N: n,
    K: H,
    a: b.w.q.buffer,
    lda: qDim,
    b: s.h.buffer,
    ldb: n,
    c: s.q.buffer,
    ldc: n,
  });
  matmul(gpu, {
    M: kvDim,
    N: n,
    K: H,
    a: b.w.k.buffer,
    lda: kvDim,
    b: s.h.buffer,
    ldb: n,
    c: s.k.buffer,
    ldc: n,
  });
  // V token-major [N, kvDim]: the P.V product reads it as At.
  matmul(gpu, {
    M: n,
    N: kvDim,
    K: H,
    a: s.h.buffer,
    lda: n,
    b: b.w.v.buffer,
    ldb: kvDim,
    c: s.v.buffer,
    ldc: kvDim,
  });
  rope(gpu, s.q.all, s.cos.all, s.sin.all, cfg.heads, hd, n);
  rope(gpu, s.k.all, s.cos.all, s.sin.all, cfg.kvHeads, hd, n);
  const scale = 1 / Math.sqrt(hd);
  for (let w = 0; w < s.windows; w++) {
    const t0 = w * T;
    for (let h0 = 0; h0 < cfg.heads; h0 += s.headGroup) {
      const hs = Math.min(s.headGroup, cfg.heads - h0);
      // S^T[h, j, i] = sum_d K[kv(h), d, j] Q[h, d, i]
      matmul(gpu, {
        M: T,
        N: T,
        K: hd,
        a: s.k.buffer,
        aOffset: Math.floor(h0 / group) * hd * n + t0,
        lda: n,
        b: s.q.buffer,
        bOffset: h0 * hd * n + t0,
        ldb: n,
        c: s.scores.buffer,
        ldc: T,
        batch: hs,
        aBatchStride: hd * n,
        aBatchDiv: group,
        bBatchStride: hd * n,
        cBatchStride: T * T,
      });
      causalSoftmax(gpu, s.scores.all, hs, T, scale);
      // O^T[h, d, i] = sum_j V[j, kv(h), d] P^T[h, j, i]
      matmul(gpu, {
        M: hd,
        N: T,
        K: T,
        a: s.v.buffer,
        aOffset: t0 * kvDim + Math.floor(h0 / group) * hd,
        lda: kvDim,
        b: s.scores.buffer,
        ldb: T,
        c: s.o.buffer,
        cOffset: h0 * hd * n + t0,
        ldc: n,
        batch: hs,
        aBatchStride: hd,
        aBatchDiv: group,
        bBatchStride: T * T,
        cBatchStride: hd * n,
      });
    }
  }
  // x += Wo o (the residual add, fused as an accumulating matmul)
  matmul(gpu, {
    M: H,
    N: n,
    K: qDim,
    a: b.w.o.buffer,
    lda: H,
    b: s.o.buffer,
    ldb: n,
    c: x.buffer,
    ldc: n,
    accumulate: true,
  });

  if (keep) gpu.copy(x.buffer, 0, keep.x2.buffer, 0, x.bytes);

  // MLP, in token chunks so [intermediate, chunk] fits one binding.
  rmsnorm(gpu, x.all, b.postNorm.all, s.h.all, H, n, cfg.rmsNormEps);
  for (let c0 = 0; c0 < n; c0 += s.mlpChunk) {
    const nc = Math.min(s.mlpChunk, n - c0);
    matmul(gpu, {
      M: I,
      N: nc,
      K: H,
      a: b.w.gate.buffer,
      lda: I,
      b: s.h.buffer,
      bOffset: c0,
      ldb: n,
      c: s.gate.buffer,
      ldc: nc,
    });
    matmul(gpu, {
      M: I,
      N: nc,
      K: H,
      a: b.w.up.buffer,
      lda: I,
      b: s.h.buffer,
      bOffset: c0,
      ldb: n,
      c: s.up.buffer,
      ldc: nc,
    });
    if (keep) gpu.copy(s.gate.buffer, 0, keep.g.buffer, 0, I * nc * 4);
    siluMul(gpu, s.gate.all, s.up.all, I * nc);
    matmul(gpu, {
      M: H,
      N: nc,
      K: I,
      a: b.w.down.buffer,
      lda: H,
      b: s.gate.buffer,
      ldb: nc,
      c: x.buffer,
      cOffset: c0,
      ldc: n,
      accumulate: true,
    });
  }
}
