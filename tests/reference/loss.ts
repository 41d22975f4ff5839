// Plain TypeScript reference for shaders/loss.wgsl (float64 inside).

const NO_TARGET = 0xffffffff;

/** out[t] = logsumexp(logits[t, :]) - logits[t, targets[t]]; 0 where targets[t] is 0xFFFFFFFF. */
export function nllRef(
  logits: Float32Array,
  targets: Uint32Array,
  T: number,
  V: number,
): Float32Array {
  const out = new Float32Array(T);
  for (let t = 0; t < T; t++) {
    if (targets[t] === NO_TARGET) continue;
    let m = -Infinity;
    for (let j = 0; j < V; j++) m = Math.max(m, logits[t * V + j]);
    let sum = 0;
    for (let j = 0; j < V; j++) sum += Math.exp(logits[t * V + j] - m);
    out[t] = m + Math.log(sum) - logits[t * V + targets[t]];
  }
  return out;
}
