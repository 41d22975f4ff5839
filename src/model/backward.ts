// Backward pass of one decoder block over B windows of T tokens (N = B * T columns, as the
// forward's BlockScratch holds them), after forwardBlock(..., keep). Every per-token kernel runs
// once over all N columns; the attention core runs per window (its causal mask and positions
// restart in every window). Weight gradients sum over all N columns.
// Weight gradients dW^T [in, out] are handed to a callback one at a time (the buffer is reused
// afterwards); the input gradient and the norm-weight gradients are optional.
// Attention probabilities are recomputed per head group rather than kept: [heads, T, T] per
// window is the largest activation of a block, and recomputing costs one small matmul.
import type { BufferRange, Gpu } from "../gpu/device.ts";
import { Tensor } from "../gpu/tensor.ts";
import type { LinearKind, ModelConfig } from "../io/config.ts";
import { causalSoftmax } from "../kernels/attention.ts";
import {
  causalSoftmaxBackward,
  rmsnormBackward,
  ropeBackward,
  siluMulBackwardInPlace,
} from "../kernels/backward.ts";
import { matmul } from "../kernels/matmul.ts";
import { transpose } from "../kernels/transpose.ts";
import { linearOf } from "./weights.ts";
import { type BlockScratch, type BlockWeights, forChunks, type KeptActivations } from "./block.ts";

/** The extra buffers a backward pass needs for `windows` windows of T tokens. */
export class BackwardScratch {
  readonly t: Record<string, Tensor> = {};
  constructor(
    readonly gpu: Gpu,
    readonly cfg: ModelConfig,
    readonly T: number,
    headGroup: number,
    readonly windows = 1,
  ) {
    for (const [name, shape] of BackwardScratch.shapes(cfg, T, headGroup, windows)) {
      this.t[name] = Tensor.empty(gpu, shape, `backward.${name}`);
    }
  }

  /** The buffers' names and shapes (also what the memory plan counts). */
  static shapes(
    cfg: ModelConfig,
    seqlen: number,
    headGroup: number,
    windows = 1,
  ): [string, number[]][] {
    const T = windows * seqlen;
    const H = cfg.hidden, I = cfg.intermediate, hd = cfg.headDim;
    const qd = cfg.heads * hd, kvd = cfg.kvHeads * hd;
    let maxW = 0;
    for (const kind of ["q", "k", "v", "o", "gate", "up", "down"] as const) {
      const l = linearOf(cfg, 0, kind);
      maxW = Math.max(maxW, l.in * l.out);
    }
    const widest = Math.max(H, I, qd);
    return [
      ["dx2", [H, T]],
      ["dh", [H, T]],
      ["da", [I, T]],
      ["do", [qd, T]],
      ["doTok", [T, qd]],
      ["dq", [qd, T]],
      ["dk", [kvd, T]],
      ["dv", [T, kvd]],
      ["dvT", [kvd, T]],
      ["vT", [kvd, T]],
      ["tokA", [T, widest]],
      ["tokB", [T, widest]],
      ["p2", [headGroup, seqlen, seqlen]],
      ["dwT", [maxW]],
      ["rstd", [T]],
    ];
  }

  release(): void {
    for (const t of Object.values(this.t)) t.release();
  }
}

export interface BackwardOptions {
  /** dW^T [in, out] of one linear, valid until the callback returns. */
  onWeightGrad: (kind: LinearKind, dwT: BufferRange) => void;
  /** W [out, in] per linear (the backward contracts over out). */
  w: Record<LinearKind, Tensor>;
  /** Input gradient [H, N], written when given. */
  dx?: Tensor;
  /** Norm-weight gradients [H], accumulated when given. */
  dInputNorm?: Tensor;
  dPostNorm?: Tensor;
}

/** Gradients from dy [H, N] after forwardBlock(gpu, b, y, s, keep) on the scratch's windows. */
export function backwardBlock(
  gpu: Gpu,
  b: BlockWeights,
  s: BlockScratch,
  keep: KeptActivations,
  bs: BackwardScratch,
  dy: Tensor,
  opt: BackwardOptions,
): void {
  const cfg = s.cfg, g = bs.t, W = opt.w;
  // T: columns of every per-token buffer (all windows); L: tokens of one window.
  const L = bs.T, T = s.n, H = cfg.hidden, I = cfg.intermediate, hd = cfg.headDim;
  const qd = cfg.heads * hd, kvd = cfg.kvHeads * hd;
  if (s.seqlen !== L || s.windows !== bs.windows) {
    throw new Error(
      `backwardBlock: the scratches disagree (${s.windows} x ${s.seqlen} tokens forward, ` +
        `${bs.windows} x ${L} backward)`,
    );
  }
  const lin = (kind: LinearKind) => linearOf(cfg, 0, kind);
  // dX [in, T] (+)= sum_o W[o, i] dY[o, t], s.linearCols columns a dispatch.
  const back = (kind: LinearKind, dY: Tensor, dX: Tensor, accumulate = false) => {
    const l = lin(kind);
    forChunks(T, s.linearCols, (c0, nc) =>
      matmul(gpu, {
        M: l.in,
        N: nc,
        K: l.out,
        a: W[kind].buffer,
        lda: l.in,
        b: dY.buffer,
        bOffset: c0,
        ldb: T,
        c: dX.buffer,
        cOffset: c0,
        ldc: T,
        accumulate,
      }));
  };
  // dW^T [in, out] = X_tok^T dY_tok, both token-major: summed over s.linearCols tokens a
  // dispatch, accumulating.
  const grad = (kind: LinearKind, xTok: Tensor, dyTok: Tensor) => {
    const l = lin(kind);
    forChunks(T, s.linearCols, (c0, nc) =>
      matmul(gpu, {
        M: l.in,
        N: l.out,
        K: nc,
        a: xTok.buffer,
        aOffset: c0 * l.in,
        lda: l.in,
        b: dyTok.buffer,
        bOffset: c0 * l.out,
        ldb: l.out,
        c: g.dwT.buffer,
        ldc: l.out,
        accumulate: c0 > 0,
      }));
    opt.onWeightGrad(kind, { buffer: g.dwT.buffer, offset: 0, size: l.in * l.out * 4 });
  };
  // [rows, T] -> [T, rows]
  const tok = (src: Tensor, rows: number, dst: Tensor) =>
    transpose(
      gpu,
      { buffer: src.buffer, offset: 0, size: rows * T * 4 },
      {
        buffer: dst.buffer,
        offset: 0,
        size: rows * T * 4,
      },
      rows,
      T,
    );

  // MLP: y = x2 + Wd a, a = silu(g) * u; a is in s.gate, u in s.up, h2 in s.h.
  tok(dy, H, g.tokB);
  tok(s.gate, I, g.tokA);
  grad("down", g.tokA, g.tokB);
  back("down", dy, g.da);
  // In place: the kept g becomes dg, the scratch up becomes du.
  siluMulBackwardInPlace(gpu, keep.g.all, s.up.all, g.da.all, I * T);
  back("gate", keep.g, g.dh);
  back("up", s.up, g.dh, true);
  tok(s.h, H, g.tokA);
  tok(keep.g, I, g.tokB);
  grad("gate", g.tokA, g.tokB);
  tok(s.up, I, g.tokB);
  grad("up", g.tokA, g.tokB);
  // dx2 = dy + rmsnorm'(x2) dh2
  gpu.copy(dy.buffer, 0, g.dx2.buffer, 0, H * T * 4);
  rmsnormBackward(gpu, keep.x2.all, b.postNorm.all, g.dh.all, g.dx2.all, H, T, cfg.rmsNormEps, {
    accumulate: true,
    ...(opt.dPostNorm ? { dw: opt.dPostNorm.all, rstd: g.rstd.all } : {}),
  });
  // o projection: x2 = x + Wo o.
  tok(s.o, qd, g.tokA);
  tok(g.dx2, H, g.tokB);
  grad("o", g.tokA, g.tokB);
  back("o", g.dx2, g.do);
  transpose(gpu, g.do.all, g.doTok.all, qd, T);

  // Attention core.
  transpose(gpu, s.v.all, g.vT.all, T, kvd);
  tok(s.q, qd, g.tokA); // q token-major [T, qd]
  tok(s.k, kvd, g.tokB); // k token-major [T, kvd]
  const scale = 1 / Math.sqrt(hd);
  const sc = s.scores.buffer, p2 = g.p2.buffer;
  for (let w = 0; w < s.windows; w++) {
    // Window w: feature-major columns c0 .. c0 + L - 1, token-major rows likewise.
    const c0 = w * L;
    for (let h0 = 0; h0 < cfg.heads; h0 += s.headGroup) {
      attentionBackward(gpu, cfg, {
        h0,
        hs: Math.min(s.headGroup, cfg.heads - h0),
        L,
        T,
        c0,
        scale,
        sc,
        p2,
        q: s.q.buffer,
        k: s.k.buffer,
        vT: g.vT.buffer,
        qTok: g.tokA.buffer,
        kTok: g.tokB.buffer,
        dO: g.do.buffer,
        dOTok: g.doTok.buffer,
        dq: g.dq.buffer,
        dk: g.dk.buffer,
        dvT: g.dvT.buffer,
      });
    }
  }
  transpose(gpu, g.dvT.all, g.dv.all, kvd, T);
  ropeBackward(gpu, g.dq.all, s.cos.all, s.sin.all, cfg.heads, hd, T);
  ropeBackward(gpu, g.dk.all, s.cos.all, s.sin.all, cfg.kvHeads, hd, T);
  // q, k, v projections of h1.
  tok(keep.h1, H, g.tokA);
  grad("v", g.tokA, g.dv);
  tok(g.dq, qd, g.tokB);
  grad("q", g.tokA, g.tokB);
  tok(g.dk, kvd, g.tokB);
  grad("k", g.tokA, g.tokB);

  if (opt.dx) {
    // dh1 = Wq' dq + Wk' dk + Wv' dv, then dx = dx2 + rmsnorm'(x) dh1.
    back("q", g.dq, g.dh);
    back("k", g.dk, g.dh, true);
    back("v", g.dvT, g.dh, true);
    gpu.copy(g.dx2.buffer, 0, opt.dx.buffer, 0, H * T * 4);
    rmsnormBackward(
      gpu,
      keep.xIn.all,
      b.inputNorm.all,
      g.dh.all,
      opt.dx.all,
      H,
      T,
      cfg.rmsNormEps,
      {
        accumulate: true,
        ...(opt.dInputNorm ? { dw: opt.dInputNorm.all, rstd: g.rstd.all } : {}),
      },
    );
  }
}

/** One window's attention operands for attentionBackward (see backwardBlock). */
interface AttentionGrads {
  /** First head and heads of the group, tokens per window, columns in all, window's column. */
  h0: number;
  hs: number;
  L: number;
  T: number;
  c0: number;
  scale: number;
  /** [hs, L, L] scratch for P^T (then dS) and dP^T (then dS^T). */
  sc: GPUBuffer;
  p2: GPUBuffer;
  /** Feature-major [qd | kvd, T]: q, k (kept), V^T, dO^T; written: dQ^T, dK^T, dV^T. */
  q: GPUBuffer;
  k: GPUBuffer;
  vT: GPUBuffer;
  dO: GPUBuffer;
  dq: GPUBuffer;
  dk: GPUBuffer;
  dvT: GPUBuffer;
  /** Token-major [T, qd | kvd]: q, k, dO. */
  qTok: GPUBuffer;
  kTok: GPUBuffer;
  dOTok: GPUBuffer;
}

/** The attention core's gradients for one head group of one window. */
function attentionBackward(gpu: Gpu, cfg: ModelConfig, a: AttentionGrads): void {
  const hd = cfg.headDim, qd = cfg.heads * hd, kvd = cfg.kvHeads * hd;
  const group = cfg.heads / cfg.kvHeads;
  const { h0, hs, L, T, c0, sc, p2 } = a;
  const kv0 = Math.floor(h0 / group);
  const range = { buffer: p2, offset: 0, size: hs * L * L * 4 };
  const scRange = { buffer: sc, offset: 0, size: hs * L * L * 4 };
  // out^T[kv(h), d, j] (+)= sum_i tok[i, h, d] m[h, i, j] for token-major [T, qd] `tok` and the
  // heads' [L, L] matrices `m`: the r-th heads of every GQA group as one batch over kv heads
  // (the group's first head writes, the rest add), or head by head when the head group splits a
  // GQA group. dV^T (tok = dO, m = P) and dK^T (tok = Q, m = dS).
  const perKvHead = (tok: GPUBuffer, m: GPUBuffer, out: GPUBuffer) => {
    for (const [h, kvs] of gqaPasses(h0, hs, group)) {
      matmul(gpu, {
        M: hd,
        N: L,
        K: L,
        a: tok,
        aOffset: c0 * qd + h * hd,
        lda: qd,
        b: m,
        bOffset: (h - h0) * L * L,
        ldb: L,
        c: out,
        cOffset: Math.floor(h / group) * hd * T + c0,
        ldc: T,
        accumulate: h % group !== 0,
        batch: kvs,
        aBatchStride: group * hd,
        bBatchStride: group * L * L,
        cBatchStride: hd * T,
      });
    }
  };
  // P^T [hs, j, i] recomputed as in the forward.
  matmul(gpu, {
    M: L,
    N: L,
    K: hd,
    a: a.k,
    aOffset: kv0 * hd * T + c0,
    lda: T,
    b: a.q,
    bOffset: h0 * hd * T + c0,
    ldb: T,
    c: sc,
    ldc: L,
    batch: hs,
    aBatchStride: hd * T,
    aBatchDiv: group,
    bBatchStride: hd * T,
    cBatchStride: L * L,
  });
  causalSoftmax(gpu, scRange, hs, L, a.scale);
  // dV^T[kv(h), d, j] (+)= sum_i dO[i, h, d] P[i, j], with P = transpose of P^T.
  transpose(gpu, scRange, range, L, L, hs);
  perKvHead(a.dOTok, p2, a.dvT);
  // dP^T [hs, j, i] = sum_d V[j, d] dO^T[d, i], then dS^T in place.
  matmul(gpu, {
    M: L,
    N: L,
    K: hd,
    a: a.vT,
    aOffset: kv0 * hd * T + c0,
    lda: T,
    b: a.dO,
    bOffset: h0 * hd * T + c0,
    ldb: T,
    c: p2,
    ldc: L,
    batch: hs,
    aBatchStride: hd * T,
    aBatchDiv: group,
    bBatchStride: hd * T,
    cBatchStride: L * L,
  });
  causalSoftmaxBackward(gpu, scRange, range, hs, L, a.scale);
  // dQ^T[h] = sum_j K[j, d] dS^T[j, i]
  matmul(gpu, {
    M: hd,
    N: L,
    K: L,
    a: a.kTok,
    aOffset: c0 * kvd + kv0 * hd,
    lda: kvd,
    b: p2,
    ldb: L,
    c: a.dq,
    cOffset: h0 * hd * T + c0,
    ldc: T,
    batch: hs,
    aBatchStride: hd,
    aBatchDiv: group,
    bBatchStride: L * L,
    cBatchStride: hd * T,
  });
  // dK^T[kv] (+)= sum_i Q[i, d] dS[i, j], with dS = transpose of dS^T.
  transpose(gpu, range, scRange, L, L, hs);
  perKvHead(a.qTok, sc, a.dk);
}

/**
 * The passes summing heads h0 .. h0 + hs - 1 into their kv heads: [first head, kv heads]. When
 * the range holds whole GQA groups, pass r takes head r of each group (kv heads at a stride of
 * `group` heads); otherwise one head a pass. Either way every kv head sums its heads in order.
 */
function gqaPasses(h0: number, hs: number, group: number): [number, number][] {
  if (h0 % group === 0 && hs % group === 0) {
    return Array.from({ length: group }, (_, r) => [h0 + r, hs / group]);
  }
  return Array.from({ length: hs }, (_, i) => [h0 + i, 1]);
}
