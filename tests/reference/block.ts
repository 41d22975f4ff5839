// Plain TypeScript reference of one Llama decoder block on feature-major activations, composed
// from the kernel references. Linear weights are W^T [in, out].
import { attentionRef } from "./attention.ts";
import { rmsnormRef } from "./norm.ts";
import { ropeRef } from "./rope.ts";

export interface BlockRefWeights {
  hidden: number;
  intermediate: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  eps: number;
  /** W^T [in, out] for q, k, v, o, gate, up, down. */
  w: Record<"q" | "k" | "v" | "o" | "gate" | "up" | "down", Float32Array>;
  inputNorm: Float32Array;
  postNorm: Float32Array;
}

/** y^T [out, T] = W x^T with W^T [in, out] and x^T [in, T] (f64 sums). */
export function linearRef(
  wT: Float32Array,
  x: Float32Array,
  inDim: number,
  out: number,
  T: number,
): Float32Array {
  const y = new Float32Array(out * T);
  const acc = new Float64Array(T);
  for (let o = 0; o < out; o++) {
    acc.fill(0);
    for (let i = 0; i < inDim; i++) {
      const w = wT[i * out + o];
      for (let t = 0; t < T; t++) acc[t] += w * x[i * T + t];
    }
    y.set(acc, o * T);
  }
  return y;
}

/** One block on x^T [hidden, T] (a single window); cos/sin [T, headDim/2]. */
export function blockRef(
  b: BlockRefWeights,
  x: Float32Array,
  T: number,
  cos: Float32Array,
  sin: Float32Array,
): Float32Array {
  const H = b.hidden, I = b.intermediate, hd = b.headDim;
  const qd = b.heads * hd, kvd = b.kvHeads * hd;
  const h1 = rmsnormRef(x, b.inputNorm, H, T, b.eps);
  const q = ropeRef(linearRef(b.w.q, h1, H, qd, T), cos, sin, b.heads, hd, T);
  const k = ropeRef(linearRef(b.w.k, h1, H, kvd, T), cos, sin, b.kvHeads, hd, T);
  const v = linearRef(b.w.v, h1, H, kvd, T);
  const o = attentionRef(q, k, v, b.heads, b.kvHeads, hd, T);
  const attn = linearRef(b.w.o, o, qd, H, T);
  const x2 = x.map((val, i) => val + attn[i]);
  const h2 = rmsnormRef(x2, b.postNorm, H, T, b.eps);
  const g = linearRef(b.w.gate, h2, H, I, T);
  const u = linearRef(b.w.up, h2, H, I, T);
  const a = g.map((gv, i) => gv / (1 + Math.exp(-gv)) * u[i]);
  const down = linearRef(b.w.down, a, I, H, T);
  return x2.map((val, i) => val + down[i]);
}
