// Plain TypeScript reference for shaders/soft_xent.wgsl (float64 inside).

const NO_TARGET = 0xffffffff;

/**
 * Per row t of logits [T, V]: q = (1 - w') onehot(targets[t]) + w' p / S over the k teacher
 * entries of the row (w' = w when S = sum p > 0, else 0); loss[t] = -sum_j q_j log softmax_j,
 * dlogits[t, j] = scale * (softmax_j - q_j). NO_TARGET rows: zero loss and gradient.
 */
export function softXentRef(
  logits: Float32Array,
  targets: Uint32Array,
  tids: Uint32Array,
  tprobs: Float32Array,
  T: number,
  V: number,
  k: number,
  w: number,
  scale: number,
): { loss: Float32Array; dlogits: Float32Array } {
  const loss = new Float32Array(T), dlogits = new Float32Array(T * V);
  for (let t = 0; t < T; t++) {
    if (targets[t] === NO_TARGET) continue;
    const q = new Float64Array(V);
    let s = 0;
    for (let i = 0; i < k; i++) s += tprobs[t * k + i];
    const wt = s > 0 ? w : 0;
    q[targets[t]] += 1 - wt;
    for (let i = 0; i < k && wt !== 0; i++) q[tids[t * k + i]] += wt * tprobs[t * k + i] / s;
    let m = -Infinity;
    for (let j = 0; j < V; j++) m = Math.max(m, logits[t * V + j]);
    let sum = 0;
    for (let j = 0; j < V; j++) sum += Math.exp(logits[t * V + j] - m);
    const lse = m + Math.log(sum);
    let l = 0;
    for (let j = 0; j < V; j++) {
      const lp = logits[t * V + j] - lse;
      l -= q[j] * lp;
      dlogits[t * V + j] = scale * (Math.exp(lp) - q[j]);
    }
    loss[t] = l;
  }
  return { loss, dlogits };
}
