// Plain TypeScript reference for shaders/norm.wgsl (float64 inside, f32 out).

/** out[h, t] = x[h, t] / sqrt(mean_h(x[:, t]^2) + eps) * w[h], x and out [H, T] feature-major. */
export function rmsnormRef(
  x: Float32Array,
  w: Float32Array,
  H: number,
  T: number,
  eps: number,
): Float32Array {
  const out = new Float32Array(H * T);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let h = 0; h < H; h++) ss += x[h * T + t] ** 2;
    const r = 1 / Math.sqrt(ss / H + eps);
    for (let h = 0; h < H; h++) out[h * T + t] = x[h * T + t] * r * w[h];
  }
  return out;
}
