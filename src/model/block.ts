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
import {
  type GpuLinear,
  linear,
  linearBytes,
  type LinearIO,
  releaseLinear,
  uploadLinear,
} from "./linear.ts";
import { type LinearName, linearOf, LINEARS, type WeightSource } from "./weights.ts";

export interface BlockWeights {
  layer: number;
  /** Per linear: dense W^T [in, out], or a codebook layer. */
  w: Record<LinearName, GpuLinear>;
  inputNorm: Tensor;
  postNorm: Tensor;
}

/** A block whose linears are all dense W^T tensors (training and backward need these). */
export interface DenseBlockWeights extends BlockWeights {
  w: Record<LinearName, Tensor>;
}

/** Uploads block `layer`, each linear in the form the source holds (codebooks stay codebooks). */
export async function uploadBlock(
  gpu: Gpu,
  cfg: ModelConfig,
  src: WeightSource,
  layer: number,
): Promise<BlockWeights> {
  const w = {} as Record<LinearName, GpuLinear>;
  for (const name of LINEARS) w[name] = await uploadLinear(gpu, cfg, src, layer, name);
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
  for (const t of Object.values(b.w)) releaseLinear(b.inputNorm.gpu, t);
  b.inputNorm.release();
  b.postNorm.release();
}

/** GPU bytes an uploaded block holds. */
export function uploadedBlockBytes(b: BlockWeights): number {
  let n = b.inputNorm.buffer.size + b.postNorm.buffer.size;
  for (const t of Object.values(b.w)) n += linearBytes(t);
  return n;
}

/** Bytes a dense block's weights take on the GPU. */
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
  /**
   * Columns per dense linear dispatch in forwardBlock (default: all n). Finetuning runs its
   * windows' linears one window at a time: on llvmpipe a matmul over 128 columns costs less per
   * column than one over 512 or more (measured), while every other kernel still runs once.
   */
  readonly linearCols: number;

  private constructor(
    readonly gpu: Gpu,
    readonly cfg: ModelConfig,
    readonly windows: number,
    readonly seqlen: number,
    cos: Tensor,
    sin: Tensor,
    linearCols?: number,
  ) {
    const n = this.n = windows * seqlen;
    this.linearCols = Math.max(1, Math.min(n, linearCols ?? n));
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
    opts: { linearCols?: number } = {},
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
      opts.linearCols,
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

/**
 * Sees each linear's input as it is made (calibration statistics): "attn" (q, k, v), "o", "mlp"
 * (gate, up), "down"; feature-major `rows` x `cols` at columns col0.. of rows of stride `ld`. It
 * must queue its GPU work at once: the scratch is reused afterwards.
 */
export type BlockTap = (
  input: "attn" | "o" | "mlp" | "down",
  x: GPUBuffer,
  rows: number,
  ld: number,
  col0: number,
  cols: number,
) => void;

/** x^T [hidden, N] <- block(x^T), in place; `keep` copies what backward needs. */
export function forwardBlock(
  gpu: Gpu,
  b: BlockWeights,
  x: Tensor,
  s: BlockScratch,
  keep?: KeptActivations,
  tap?: BlockTap,
): void {
  const cfg = s.cfg;
  const n = s.n, T = s.seqlen, hd = cfg.headDim, H = cfg.hidden;

  if (keep && s.mlpChunk < n) throw new Error("forwardBlock: keep needs the MLP in one chunk");
  if (keep) gpu.copy(x.buffer, 0, keep.xIn.buffer, 0, x.bytes);

  // Attention.
  rmsnorm(gpu, x.all, b.inputNorm.all, s.h.all, H, n, cfg.rmsNormEps);
  if (keep) gpu.copy(s.h.buffer, 0, keep.h1.buffer, 0, s.h.bytes);
  tap?.("attn", s.h.buffer, H, n, 0, n);
  // V token-major [N, kvDim]: the P.V product reads it as At.
  if (s.linearCols >= n) {
    projectQkv(gpu, b, cfg, s.h.buffer, n, s.q.buffer, { buffer: s.k.buffer, offset: 0, ld: n }, {
      buffer: s.v.buffer,
      offset: 0,
    });
  } else {
    const qDim = cfg.heads * hd, kvDim = cfg.kvHeads * hd;
    forChunks(n, s.linearCols, (c0, nc) => {
      const x = { N: nc, x: s.h.buffer, xOffset: c0, ldx: n };
      const fm = { yOffset: c0, yRow: n, yCol: 1 };
      linear(gpu, b.w.q, H, qDim, { ...x, ...fm, y: s.q.buffer });
      linear(gpu, b.w.k, H, kvDim, { ...x, ...fm, y: s.k.buffer });
      linear(gpu, b.w.v, H, kvDim, {
        ...x,
        y: s.v.buffer,
        yOffset: c0 * kvDim,
        yRow: 1,
        yCol: kvDim,
      });
    });
  }
  rope(gpu, s.q.all, s.cos.all, s.sin.all, cfg.heads, hd, n);
  rope(gpu, s.k.all, s.cos.all, s.sin.all, cfg.kvHeads, hd, n);
  for (let w = 0; w < s.windows; w++) {
    const t0 = w * T;
    attend(gpu, cfg, {
      q: s.q.buffer,
      ldq: n,
      qCol: t0,
      k: s.k.buffer,
      ldk: n,
      kCol: t0,
      v: s.v.buffer,
      vRow: t0,
      o: s.o.buffer,
      scores: s.scores.buffer,
      headGroup: s.headGroup,
      keys: T,
      queries: T,
      q0: 0,
    });
  }
  tap?.("o", s.o.buffer, cfg.heads * hd, n, 0, n);
  outputAndMlp(gpu, b, x, s, n, keep, tap);
}

/**
 * Where attend() finds its operands: Q^T [qDim, ldq] from column qCol, K^T [kvDim, ldk] from
 * column kCol (keys 0 .. keys - 1), V token-major [.., kvDim] from row vRow, and O^T written like
 * Q. Query c sits at position q0 + c; scores hold [headGroup, keys, queries].
 */
export interface AttentionOperands {
  q: GPUBuffer;
  ldq: number;
  qCol: number;
  k: GPUBuffer;
  ldk: number;
  kCol: number;
  v: GPUBuffer;
  vRow: number;
  o: GPUBuffer;
  scores: GPUBuffer;
  headGroup: number;
  keys: number;
  queries: number;
  q0: number;
}

/**
 * Causal (GQA, optionally sliding-window) attention, in groups of heads: the scores and the P.V
 * product are matmuls, the softmax masks keys past each query's position. Serves the batched
 * windows of forwardBlock and the KV cache of the runner.
 */
export function attend(gpu: Gpu, cfg: ModelConfig, a: AttentionOperands): void {
  const hd = cfg.headDim, kvDim = cfg.kvHeads * hd, group = cfg.heads / cfg.kvHeads;
  const { keys: L, queries: nq } = a;
  const scale = 1 / Math.sqrt(hd);
  for (let h0 = 0; h0 < cfg.heads; h0 += a.headGroup) {
    const hs = Math.min(a.headGroup, cfg.heads - h0);
    const kv0 = Math.floor(h0 / group);
    // S^T[h, j, i] = sum_d K[kv(h), d, j] Q[h, d, i]
    matmul(gpu, {
      M: L,
      N: nq,
      K: hd,
      a: a.k,
      aOffset: kv0 * hd * a.ldk + a.kCol,
      lda: a.ldk,
      b: a.q,
      bOffset: h0 * hd * a.ldq + a.qCol,
      ldb: a.ldq,
      c: a.scores,
      ldc: nq,
      batch: hs,
      aBatchStride: hd * a.ldk,
      aBatchDiv: group,
      bBatchStride: hd * a.ldq,
      cBatchStride: L * nq,
    });
    const scores = { buffer: a.scores, offset: 0, size: hs * L * nq * 4 };
    causalSoftmax(gpu, scores, hs, L, scale, cfg.slidingWindow ?? 0, { q0: a.q0, nq });
    // O^T[h, d, i] = sum_j V[j, kv(h), d] P^T[h, j, i]
    matmul(gpu, {
      M: hd,
      N: nq,
      K: L,
      a: a.v,
      aOffset: a.vRow * kvDim + kv0 * hd,
      lda: kvDim,
      b: a.scores,
      ldb: nq,
      c: a.o,
      cOffset: h0 * hd * a.ldq + a.qCol,
      ldc: a.ldq,
      batch: hs,
      aBatchStride: hd,
      aBatchDiv: group,
      bBatchStride: L * nq,
      cBatchStride: hd * a.ldq,
    });
  }
}

/**
 * From h [H, n] (feature-major): q [qDim, n] feature-major, K^T element (r, t) at
 * k.offset + r * k.ld + t, and V token-major, element (t, r) at v.offset + t * kvDim + r.
 */
export function projectQkv(
  gpu: Gpu,
  b: BlockWeights,
  cfg: ModelConfig,
  h: GPUBuffer,
  n: number,
  q: GPUBuffer,
  k: { buffer: GPUBuffer; offset: number; ld: number },
  v: { buffer: GPUBuffer; offset: number },
): void {
  const H = cfg.hidden, qDim = cfg.heads * cfg.headDim, kvDim = cfg.kvHeads * cfg.headDim;
  const x = { N: n, x: h, ldx: n };
  linear(gpu, b.w.q, H, qDim, { ...x, y: q, yRow: n, yCol: 1 });
  linear(gpu, b.w.k, H, kvDim, { ...x, y: k.buffer, yOffset: k.offset, yRow: k.ld, yCol: 1 });
  linear(gpu, b.w.v, H, kvDim, { ...x, y: v.buffer, yOffset: v.offset, yRow: 1, yCol: kvDim });
}

/**
 * The rest of the block after attention, on the first n columns of the scratch: x += o Wo (the
 * residual add, fused as an accumulating linear), then x += MLP(rmsnorm(x)) in token chunks so
 * [intermediate, chunk] fits one binding. x and o are [H, n] and [qDim, n] feature-major.
 */
export function outputAndMlp(
  gpu: Gpu,
  b: BlockWeights,
  x: Tensor,
  s: BlockScratch,
  n: number,
  keep?: KeptActivations,
  tap?: BlockTap,
): void {
  const cfg = s.cfg, H = cfg.hidden, I = cfg.intermediate, qDim = cfg.heads * cfg.headDim;
  // Feature-major linears, s.linearCols columns a dispatch (io's offsets are columns).
  const lin = (w: GpuLinear, inDim: number, out: number, io: LinearIO) =>
    forChunks(io.N, s.linearCols, (c0, nc) =>
      linear(gpu, w, inDim, out, {
        ...io,
        N: nc,
        xOffset: (io.xOffset ?? 0) + c0,
        yOffset: (io.yOffset ?? 0) + c0,
      }));
  lin(b.w.o, qDim, H, {
    N: n,
    x: s.o.buffer,
    ldx: n,
    y: x.buffer,
    yRow: n,
    yCol: 1,
    accumulate: true,
  });
  if (keep) gpu.copy(x.buffer, 0, keep.x2.buffer, 0, x.bytes);
  rmsnorm(gpu, x.all, b.postNorm.all, s.h.all, H, n, cfg.rmsNormEps);
  tap?.("mlp", s.h.buffer, H, n, 0, n);
  const chunk = Math.min(s.mlpChunk, n);
  for (let c0 = 0; c0 < n; c0 += chunk) {
    const nc = Math.min(chunk, n - c0);
    const hIn = { N: nc, x: s.h.buffer, xOffset: c0, ldx: n };
    lin(b.w.gate, H, I, { ...hIn, y: s.gate.buffer, yRow: nc, yCol: 1 });
    lin(b.w.up, H, I, { ...hIn, y: s.up.buffer, yRow: nc, yCol: 1 });
    if (keep) gpu.copy(s.gate.buffer, 0, keep.g.buffer, 0, I * nc * 4);
    siluMul(gpu, s.gate.all, s.up.all, I * nc);
    tap?.("down", s.gate.buffer, I, nc, 0, nc);
    lin(b.w.down, I, H, {
      N: nc,
      x: s.gate.buffer,
      ldx: nc,
      y: x.buffer,
      yOffset: c0,
      yRow: n,
      yCol: 1,
      accumulate: true,
    });
  }
}

/** f(c0, nc) for consecutive column chunks of at most `chunk` of n columns. */
export function forChunks(n: number, chunk: number, f: (c0: number, nc: number) => void): void {
  for (let c0 = 0; c0 < n; c0 += chunk) f(c0, Math.min(chunk, n - c0));
}
