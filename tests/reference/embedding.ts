// Plain TypeScript reference for shaders/embedding.wgsl.

/**
 * out [H, T] feature-major, starting from `init` (or zeros): out[h, t] = table[ids[t] - row0, h]
 * for ids in [row0, row0 + V), table [V, H] row-major.
 */
export function embedRef(
  table: Float32Array,
  ids: Uint32Array,
  V: number,
  H: number,
  T: number,
  row0 = 0,
  init?: Float32Array,
): Float32Array {
  const out = init ? init.slice() : new Float32Array(H * T);
  for (let t = 0; t < T; t++) {
    const r = ids[t] - row0;
    if (r < 0 || r >= V) continue;
    for (let h = 0; h < H; h++) out[h * T + t] = table[r * H + h];
  }
  return out;
}
