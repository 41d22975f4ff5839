// Plain TypeScript reference for shaders/rope.wgsl, written the way HF writes it:
// q * cos(emb) + rotate_half(q) * sin(emb) with emb = cat(freqs, freqs).

/** x [nHeads * headDim, T] feature-major, cos/sin [T, headDim / 2]; returns the rotated copy. */
export function ropeRef(
  x: Float32Array,
  cos: Float32Array,
  sin: Float32Array,
  nHeads: number,
  headDim: number,
  T: number,
): Float32Array {
  const half = headDim / 2;
  const out = new Float32Array(x.length);
  for (let h = 0; h < nHeads; h++) {
    for (let t = 0; t < T; t++) {
      const q = (d: number) => x[(h * headDim + d) * T + t];
      for (let d = 0; d < headDim; d++) {
        const c = cos[t * half + (d % half)], s = sin[t * half + (d % half)];
        const rotated = d < half ? -q(d + half) : q(d - half);
        out[(h * headDim + d) * T + t] = q(d) * c + rotated * s;
      }
    }
  }
  return out;
}
