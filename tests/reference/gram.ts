// Reference for shaders/gram.wgsl: second moments of feature-major inputs, summed in token order
// in f32 as the kernel does; and the inputs of a block's linears, for the statistics stage.
import { attentionRef } from "./attention.ts";
import { type BlockRefWeights, linearRef } from "./block.ts";
import { rmsnormRef } from "./norm.ts";
import { ropeRef } from "./rope.ts";

/** acc[i] + sum_t x[i * ld + col0 + t]^2 for i < F. */
export function diagRef(
  acc: Float32Array,
  x: Float32Array,
  F: number,
  T: number,
  ld: number,
  col0 = 0,
): Float32Array {
  const out = new Float32Array(acc);
  for (let i = 0; i < F; i++) {
    let s = 0;
    for (let t = 0; t < T; t++) {
      const v = x[i * ld + col0 + t];
      s = Math.fround(s + Math.fround(v * v));
    }
    out[i] = Math.fround(out[i] + s);
  }
  return out;
}

/** acc[(i - r0) * F + j] + sum_t x[i, t] x[j, t] for i in [r0, r0 + rows), j < F. */
export function gramRef(
  acc: Float32Array,
  x: Float32Array,
  F: number,
  T: number,
  ld: number,
  col0 = 0,
  r0 = 0,
  rows = F,
): Float32Array {
  const out = new Float32Array(acc);
  for (let ri = 0; ri < rows; ri++) {
    for (let j = 0; j < F; j++) {
      let s = 0;
      for (let t = 0; t < T; t++) {
        s = Math.fround(s + Math.fround(x[(r0 + ri) * ld + col0 + t] * x[j * ld + col0 + t]));
      }
      out[ri * F + j] = Math.fround(out[ri * F + j] + s);
    }
  }
  return out;
}

/** The four inputs of a block's linears on x^T [hidden, T] (one window), as blockRef makes them. */
export function blockInputsRef(
  b: BlockRefWeights,
  x: Float32Array,
  T: number,
  cos: Float32Array,
  sin: Float32Array,
): { attn: Float32Array; o: Float32Array; mlp: Float32Array; down: Float32Array } {
  const H = b.hidden, I = b.intermediate, hd = b.headDim;
  const qd = b.heads * hd, kvd = b.kvHeads * hd;
  const h1 = rmsnormRef(x, b.inputNorm, H, T, b.eps);
  const q = ropeRef(linearRef(b.w.q, h1, H, qd, T), cos, sin, b.heads, hd, T);
  const k = ropeRef(linearRef(b.w.k, h1, H, kvd, T), cos, sin, b.kvHeads, hd, T);
  const v = linearRef(b.w.v, h1, H, kvd, T);
  const o = attentionRef(q, k, v, b.heads, b.kvHeads, hd, T);
  const attnOut = linearRef(b.w.o, o, qd, H, T);
  const x2 = x.map((val, i) => val + attnOut[i]);
  const h2 = rmsnormRef(x2, b.postNorm, H, T, b.eps);
  const g = linearRef(b.w.gate, h2, H, I, T);
  const u = linearRef(b.w.up, h2, H, I, T);
  const a = g.map((gv, i) => gv / (1 + Math.exp(-gv)) * u[i]);
  return { attn: h1, o, mlp: h2, down: a };
}

/** Mean over tokens of x_i^2 and sum over tokens of x x^T, in f64, over windows of [F, T]. */
export function momentsRef(
  xs: Float32Array[],
  F: number,
  T: number,
): { diag: Float64Array; gram: Float64Array } {
  const diag = new Float64Array(F), gram = new Float64Array(F * F);
  for (const x of xs) {
    for (let i = 0; i < F; i++) {
      for (let j = 0; j < F; j++) {
        let s = 0;
        for (let t = 0; t < T; t++) s += x[i * T + t] * x[j * T + t];
        gram[i * F + j] += s;
      }
    }
  }
  for (let i = 0; i < F; i++) diag[i] = gram[i * F + i] / (xs.length * T);
  return { diag, gram };
}
