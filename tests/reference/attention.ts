// Plain TypeScript references for shaders/attention.wgsl (the causal softmax) and for the whole
// causal grouped-query attention built from it. Float64 inside, f32 out.

/** Softmax of s = S^T [heads, T, nq] (key rows, query columns, query i = q0 + c), as the kernel. */
export function causalSoftmaxRef(
  s: Float32Array,
  heads: number,
  T: number,
  scale: number,
  window = 0,
  q0 = 0,
  nq = T,
): Float32Array {
  const out = new Float32Array(heads * T * nq);
  for (let h = 0; h < heads; h++) {
    for (let c = 0; c < nq; c++) {
      const i = q0 + c;
      const at = (j: number) => h * T * nq + j * nq + c;
      const hi = Math.min(i, T - 1), lo = window > 0 ? Math.max(0, i - window + 1) : 0;
      let m = -Infinity;
      for (let j = lo; j <= hi; j++) m = Math.max(m, Math.fround(scale * s[at(j)]));
      let sum = 0;
      for (let j = lo; j <= hi; j++) sum += Math.exp(Math.fround(scale * s[at(j)]) - m);
      for (let j = lo; j <= hi; j++) out[at(j)] = Math.exp(Math.fround(scale * s[at(j)]) - m) / sum;
    }
  }
  return out;
}

/**
 * Causal grouped-query attention on feature-major inputs: Q^T [heads * headDim, T],
 * K^T and V^T [kvHeads * headDim, T] (RoPE already applied); head h reads kv head
 * floor(h / (heads / kvHeads)). Returns O^T [heads * headDim, T]. `window` > 0 also masks keys
 * j <= i - window.
 */
export function attentionRef(
  qT: Float32Array,
  kT: Float32Array,
  vT: Float32Array,
  heads: number,
  kvHeads: number,
  headDim: number,
  T: number,
  scale = 1 / Math.sqrt(headDim),
  window = 0,
): Float32Array {
  if (heads % kvHeads !== 0) throw new Error(`attentionRef: ${heads} heads, ${kvHeads} kv heads`);
  const group = heads / kvHeads;
  const out = new Float32Array(heads * headDim * T);
  const p = new Float64Array(T);
  for (let h = 0; h < heads; h++) {
    const kv = Math.floor(h / group);
    for (let i = 0; i < T; i++) {
      const lo = window > 0 ? Math.max(0, i - window + 1) : 0;
      let m = -Infinity;
      for (let j = lo; j <= i; j++) {
        let dot = 0;
        for (let d = 0; d < headDim; d++) {
          dot += qT[(h * headDim + d) * T + i] * kT[(kv * headDim + d) * T + j];
        }
        p[j] = dot * scale;
        m = Math.max(m, p[j]);
      }
      let sum = 0;
      for (let j = lo; j <= i; j++) sum += p[j] = Math.exp(p[j] - m);
      for (let d = 0; d < headDim; d++) {
        let o = 0;
        for (let j = lo; j <= i; j++) o += p[j] * vT[(kv * headDim + d) * T + j];
        out[(h * headDim + d) * T + i] = o / sum;
      }
    }
  }
  return out;
}
