// Plain TypeScript reference for shaders/mse.wgsl (float64 sums).

export function mseGradRef(
  y: Float32Array,
  target: Float32Array,
  H: number,
  T: number,
  scale: number,
): { dy: Float32Array; sq: Float32Array } {
  const dy = new Float32Array(H * T), sq = new Float32Array(T);
  for (let t = 0; t < T; t++) {
    let s = 0;
    for (let h = 0; h < H; h++) {
      const e = y[h * T + t] - target[h * T + t];
      s += e * e;
      dy[h * T + t] = scale * e;
    }
    sq[t] = s;
  }
  return { dy, sq };
}
