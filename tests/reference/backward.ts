// Plain TypeScript references for the backward kernels (src/kernels/backward.ts), float64
// inside and out, with the float64 forwards their finite-difference checks differentiate.

const NO_TARGET = 0xffffffff;

/** y[h, t] = x[h, t] / sqrt(mean_h(x[:, t]^2) + eps) * w[h] in float64, feature-major. */
export function rmsnorm64(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  H: number,
  T: number,
  eps: number,
): Float64Array {
  const out = new Float64Array(H * T);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let h = 0; h < H; h++) ss += x[h * T + t] ** 2;
    const r = 1 / Math.sqrt(ss / H + eps);
    for (let h = 0; h < H; h++) out[h * T + t] = x[h * T + t] * r * w[h];
  }
  return out;
}

/** dx [H, T] and dw [H] of rmsnorm64 for the upstream gradient dy [H, T]. */
export function rmsnormBackwardRef(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  dy: ArrayLike<number>,
  H: number,
  T: number,
  eps: number,
): { dx: Float64Array; dw: Float64Array } {
  const dx = new Float64Array(H * T), dw = new Float64Array(H);
  for (let t = 0; t < T; t++) {
    let ss = 0, dot = 0;
    for (let h = 0; h < H; h++) {
      const v = x[h * T + t];
      ss += v * v;
      dot += w[h] * dy[h * T + t] * v;
    }
    const r = 1 / Math.sqrt(ss / H + eps);
    const c = (dot / H) * r ** 3;
    for (let h = 0; h < H; h++) {
      const i = h * T + t;
      dx[i] = r * w[h] * dy[i] - x[i] * c;
      dw[h] += dy[i] * x[i] * r;
    }
  }
  return { dx, dw };
}

/** rope in float64 (rotate_half layout), x [nHeads * headDim, T], cos/sin [T, headDim / 2]. */
export function rope64(
  x: ArrayLike<number>,
  cos: ArrayLike<number>,
  sin: ArrayLike<number>,
  nHeads: number,
  headDim: number,
  T: number,
  sign = 1,
): Float64Array {
  const half = headDim / 2;
  const out = new Float64Array(nHeads * headDim * T);
  for (let h = 0; h < nHeads; h++) {
    for (let d = 0; d < half; d++) {
      for (let t = 0; t < T; t++) {
        const i1 = (h * headDim + d) * T + t, i2 = i1 + half * T;
        const c = cos[t * half + d], s = sign * sin[t * half + d];
        out[i1] = x[i1] * c - x[i2] * s;
        out[i2] = x[i2] * c + x[i1] * s;
      }
    }
  }
  return out;
}

/** The gradient of rope64: the rotation by the negative angle. */
export function ropeBackwardRef(
  g: ArrayLike<number>,
  cos: ArrayLike<number>,
  sin: ArrayLike<number>,
  nHeads: number,
  headDim: number,
  T: number,
): Float64Array {
  return rope64(g, cos, sin, nHeads, headDim, T, -1);
}

function visible(i: number, T: number, window: number): [number, number] {
  return [window > 0 ? Math.max(0, i - window + 1) : 0, Math.min(i, T - 1)];
}

/** causalSoftmax in float64 on s [heads, T, nq] (key rows, query columns, i = q0 + c). */
export function causalSoftmax64(
  s: ArrayLike<number>,
  heads: number,
  T: number,
  scale: number,
  window = 0,
  q0 = 0,
  nq = T,
): Float64Array {
  const out = new Float64Array(heads * T * nq);
  for (let h = 0; h < heads; h++) {
    for (let c = 0; c < nq; c++) {
      const at = (j: number) => (h * T + j) * nq + c;
      const [lo, hi] = visible(q0 + c, T, window);
      let m = -Infinity;
      for (let j = lo; j <= hi; j++) m = Math.max(m, scale * s[at(j)]);
      let sum = 0;
      for (let j = lo; j <= hi; j++) sum += Math.exp(scale * s[at(j)] - m);
      for (let j = lo; j <= hi; j++) out[at(j)] = Math.exp(scale * s[at(j)] - m) / sum;
    }
  }
  return out;
}

/** dL/ds from p = causalSoftmax(s) and dp = dL/dp, same layout; 0 for masked keys. */
export function causalSoftmaxBackwardRef(
  p: ArrayLike<number>,
  dp: ArrayLike<number>,
  heads: number,
  T: number,
  scale: number,
  window = 0,
  q0 = 0,
  nq = T,
): Float64Array {
  const ds = new Float64Array(heads * T * nq);
  for (let h = 0; h < heads; h++) {
    for (let c = 0; c < nq; c++) {
      const at = (j: number) => (h * T + j) * nq + c;
      const [lo, hi] = visible(q0 + c, T, window);
      let dot = 0;
      for (let j = lo; j <= hi; j++) dot += p[at(j)] * dp[at(j)];
      for (let j = lo; j <= hi; j++) ds[at(j)] = scale * p[at(j)] * (dp[at(j)] - dot);
    }
  }
  return ds;
}

/** h = silu(g) * u in float64. */
export function siluMul64(g: ArrayLike<number>, u: ArrayLike<number>): Float64Array {
  return Float64Array.from(g, (a, i) => (a / (1 + Math.exp(-a))) * u[i]);
}

/** dg, du of h = silu(g) * u for the upstream gradient dh. */
export function siluMulBackwardRef(
  g: ArrayLike<number>,
  u: ArrayLike<number>,
  dh: ArrayLike<number>,
): { dg: Float64Array; du: Float64Array } {
  const n = g.length, dg = new Float64Array(n), du = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const a = g[i], sg = 1 / (1 + Math.exp(-a));
    dg[i] = dh[i] * u[i] * sg * (1 + a * (1 - sg));
    du[i] = dh[i] * a * sg;
  }
  return { dg, du };
}

/** scale * sum over rows with a target of logsumexp(logits[t, :]) - logits[t, target]. */
export function xentLoss64(
  logits: ArrayLike<number>,
  targets: ArrayLike<number>,
  T: number,
  V: number,
  scale: number,
): number {
  let loss = 0;
  for (let t = 0; t < T; t++) {
    if (targets[t] === NO_TARGET) continue;
    let m = -Infinity;
    for (let j = 0; j < V; j++) m = Math.max(m, logits[t * V + j]);
    let sum = 0;
    for (let j = 0; j < V; j++) sum += Math.exp(logits[t * V + j] - m);
    loss += m + Math.log(sum) - logits[t * V + targets[t]];
  }
  return scale * loss;
}

/** dlogits [T, V] of xentLoss64: scale * (softmax - onehot), zero rows for NO_TARGET. */
export function softmaxXentBackwardRef(
  logits: ArrayLike<number>,
  targets: ArrayLike<number>,
  T: number,
  V: number,
  scale: number,
): Float64Array {
  const out = new Float64Array(T * V);
  for (let t = 0; t < T; t++) {
    if (targets[t] === NO_TARGET) continue;
    let m = -Infinity;
    for (let j = 0; j < V; j++) m = Math.max(m, logits[t * V + j]);
    let sum = 0;
    for (let j = 0; j < V; j++) sum += Math.exp(logits[t * V + j] - m);
    for (let j = 0; j < V; j++) {
      out[t * V + j] = scale * (Math.exp(logits[t * V + j] - m) / sum - (j === targets[t] ? 1 : 0));
    }
  }
  return out;
}

/** dTable [V, H]: dTable[v, h] = sum over t with ids[t] = v of dx[h, t] (dx [H, T]). */
export function embedBackwardRef(
  dx: ArrayLike<number>,
  ids: ArrayLike<number>,
  V: number,
  H: number,
  T: number,
): Float64Array {
  const out = new Float64Array(V * H);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < H; h++) out[ids[t] * H + h] += dx[h * T + t];
  }
  return out;
}

/**
 * Central differences of a scalar function f at x (float64): grad[i] = (f(x + e_i h) -
 * f(x - e_i h)) / 2h for every i.
 */
export function finiteDiff(f: (x: Float64Array) => number, x: ArrayLike<number>, h = 1e-5) {
  const xp = Float64Array.from(x);
  const grad = new Float64Array(xp.length);
  for (let i = 0; i < xp.length; i++) {
    const v = xp[i];
    xp[i] = v + h;
    const up = f(xp);
    xp[i] = v - h;
    const down = f(xp);
    xp[i] = v;
    grad[i] = (up - down) / (2 * h);
  }
  return grad;
}

/** sum_i a[i] * b[i] in float64. */
export function dot64(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}
