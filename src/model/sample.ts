/**
 * Next-token sampling from a logits row: greedy, temperature, top-k and top-p (nucleus).
 * Deterministic for a given Rng seed; all arithmetic on probabilities is float64.
 */
import type { Rng } from "../util/rng.ts";

export interface SampleSettings {
  /** 0 = greedy argmax; otherwise logits are divided by it before the softmax. */
  temperature: number;
  /** Keep only the k most probable tokens; 0 = off. */
  topK: number;
  /** Keep the smallest set of most probable tokens whose mass is >= p; 1 = keep all. */
  topP: number;
}

/** Index of the largest finite-or-infinite logit; ties go to the lowest id; NaN is never chosen
 * unless every entry is NaN (then 0). */
export function argmax(logits: ArrayLike<number>): number {
  let best = -1;
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i];
    if (Number.isNaN(v)) continue;
    if (best < 0 || v > logits[best]) best = i;
  }
  return best < 0 ? 0 : best;
}

/**
 * The candidate distribution after temperature, top-k and top-p: token ids (most probable first,
 * ties by lowest id) and their renormalised probabilities. Exposed for tests.
 */
export function candidates(
  logits: ArrayLike<number>,
  s: SampleSettings,
): { ids: number[]; probs: number[] } {
  if (logits.length === 0) throw new Error("sampleToken: empty logits");
  if (s.temperature <= 0) return { ids: [argmax(logits)], probs: [1] };
  const d = weights(logits, s.temperature);
  const { ids, total } = cut(d, s, true)!;
  return { ids, probs: ids.map((i) => d.w[i] / total) };
}

interface Weights {
  /** Unnormalised float64 softmax weights (0 for -inf and NaN logits). */
  w: Float64Array;
  sum: number;
  /** Ids with a weight > 0. */
  count: number;
}

function weights(logits: ArrayLike<number>, temperature: number): Weights {
  const n = logits.length;
  const invT = 1 / temperature;
  let maxL = -Infinity;
  for (let i = 0; i < n; i++) if (logits[i] > maxL) maxL = logits[i];
  const w = new Float64Array(n);
  if (maxL === -Infinity || Number.isNaN(maxL)) {
    w[argmax(logits)] = 1; // nothing finite: the greedy choice
    return { w, sum: 1, count: 1 };
  }
  let sum = 0;
  let count = 0;
  for (let i = 0; i < n; i++) {
    const v = logits[i];
    // +inf logits share all the mass equally
    const e = maxL === Infinity
      ? (v === Infinity ? 1 : 0)
      : (v > -Infinity ? Math.exp((v - maxL) * invT) : 0);
    w[i] = e;
    sum += e;
    if (e > 0) count++;
  }
  return { w, sum, count };
}

/**
 * Top-k then top-p: the kept ids, most probable first (ties: lowest id), and their weight; null
 * when nothing is cut (unless `always`). Only weights >= a floor are sorted: the k-th largest for top-k; for top-p
 * alone, a floor below which all tokens (fewer than `count`, each under it) hold less than half of
 * (1 - p) of the mass, so those above it already reach p.
 */
function cut(
  d: Weights,
  s: SampleSettings,
  always = false,
): { ids: number[]; total: number } | null {
  const { w, sum, count } = d;
  const topK = s.topK > 0 && s.topK < count ? s.topK : 0;
  const topP = s.topP < 1 ? s.topP : 1;
  if (topK === 0 && topP === 1 && !always) return null;
  let floor = Number.MIN_VALUE;
  if (topK > 0) floor = Math.max(floor, kthLargest(w, topK));
  else if (topP < 1) floor = (0.5 * (1 - topP) * sum) / count;
  const order: number[] = [];
  for (let i = 0; i < w.length; i++) if (w[i] >= floor) order.push(i);
  order.sort((a, b) => w[b] - w[a] || a - b);
  let keep = order.length;
  if (topK > 0 && topK < keep) keep = topK; // ties at the k-th weight: lowest ids
  if (topP < 1) {
    // Renormalised over the top-k set first, as Hugging Face applies them in turn.
    let massK = 0;
    for (let j = 0; j < keep; j++) massK += w[order[j]];
    const target = topP * (topK > 0 ? massK : sum);
    let acc = 0;
    let j = 0;
    while (j < keep) {
      acc += w[order[j]];
      j++;
      if (acc >= target) break;
    }
    keep = Math.max(1, j);
  }
  order.length = keep;
  let total = 0;
  for (const i of order) total += w[i];
  return { ids: order, total };
}

/** The k-th largest value of `w` (quickselect on a copy, O(n)). */
function kthLargest(w: Float64Array, k: number): number {
  const a = w.slice();
  const target = a.length - k; // index in ascending order
  let lo = 0, hi = a.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const pivot = Math.max(Math.min(a[lo], a[mid]), Math.min(Math.max(a[lo], a[mid]), a[hi]));
    let i = lo, j = hi;
    while (i <= j) {
      while (a[i] < pivot) i++;
      while (a[j] > pivot) j--;
      if (i <= j) {
        const t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    if (target <= j) hi = j;
    else if (target >= i) lo = i;
    else return a[target];
  }
  return a[target];
}

/** Draws the next token id from `logits` with the given settings; temperature 0 = argmax. */
export function sampleToken(logits: Float32Array, s: SampleSettings, rng: Rng): number {
  if (logits.length === 0) throw new Error("sampleToken: empty logits");
  if (s.temperature <= 0) return argmax(logits);
  const d = weights(logits, s.temperature);
  const kept = cut(d, s);
  const u = rng.next(); // one draw per sampled token, whatever is kept
  if (kept === null) {
    // Nothing cut: walk the weights in id order.
    const x = u * d.sum;
    let acc = 0;
    let last = 0;
    for (let i = 0; i < d.w.length; i++) {
      if (d.w[i] === 0) continue;
      acc += d.w[i];
      last = i;
      if (x < acc) return i;
    }
    return last;
  }
  const x = u * kept.total;
  let acc = 0;
  for (const i of kept.ids) {
    acc += d.w[i];
    if (x < acc) return i;
  }
  return kept.ids[kept.ids.length - 1];
}
