// Inputs for the GPTQ tests: seeded correlated activations, real block-0 attention inputs of a
// model (RMSNorm of the embeddings of real text), their gram matrix and the output error.
import { loadConfig } from "../../src/io/config.ts";
import { SafetensorsIndex } from "../../src/io/safetensors.ts";
import { readText } from "../../src/io/text.ts";
import { Tokenizer } from "../../src/io/tokenizer.ts";
import { Rng } from "../../src/util/rng.ts";

/** X [tokens, in]: low-rank correlated features with uneven scales; `dead` inputs are zero. */
export function seededInputs(tokens: number, n: number, seed: number, dead: number[] = []) {
  const rng = new Rng(seed);
  const k = Math.max(4, Math.floor(n / 3));
  const mix = Float64Array.from({ length: k * n }, () => rng.normal());
  const scale = Float64Array.from({ length: n }, () => 0.2 + 2 * rng.next());
  const x = new Float32Array(tokens * n);
  const z = new Float64Array(k);
  for (let t = 0; t < tokens; t++) {
    for (let a = 0; a < k; a++) z[a] = rng.normal();
    for (let i = 0; i < n; i++) {
      let s = 0.3 * rng.normal();
      for (let a = 0; a < k; a++) s += z[a] * mix[a * n + i];
      x[t * n + i] = dead.includes(i) ? 0 : s * scale[i] / Math.sqrt(k);
    }
  }
  return x;
}

/** sum over tokens of x x^T, [n, n], as the statistics stage gives it (f32). */
export function gramOf(x: Float32Array, tokens: number, n: number): Float32Array {
  const g = new Float64Array(n * n);
  for (let t = 0; t < tokens; t++) {
    const row = x.subarray(t * n, (t + 1) * n);
    for (let a = 0; a < n; a++) {
      const v = row[a];
      if (v === 0) continue;
      for (let b = 0; b < n; b++) g[a * n + b] += v * row[b];
    }
  }
  return Float32Array.from(g);
}

/** ||X W^T - X Wq^T||_F^2 = sum over rows r of d_r^T gram d_r, d = W - Wq ([out, in]). */
export function outputError(
  w: ArrayLike<number>,
  wq: ArrayLike<number>,
  out: number,
  n: number,
  gram: ArrayLike<number>,
): number {
  let e = 0;
  const d = new Float64Array(n);
  for (let r = 0; r < out; r++) {
    for (let i = 0; i < n; i++) d[i] = w[r * n + i] - wq[r * n + i];
    for (let a = 0; a < n; a++) {
      if (d[a] === 0) continue;
      let s = 0;
      for (let b = 0; b < n; b++) s += gram[a * n + b] * d[b];
      e += d[a] * s;
    }
  }
  return e;
}

/**
 * Block 0's attention input on real text: RMSNorm(embedding) * input_layernorm, [tokens, hidden],
 * and W [out, in] of block 0's `kind` linear.
 */
export async function realLayer(dir: string, textFile: string, tokens: number, name: string) {
  const cfg = await loadConfig(dir);
  const tok = await Tokenizer.load(dir);
  const ids = tok.encode(await readText(textFile)).subarray(0, tokens);
  if (ids.length < tokens) throw new Error(`${textFile}: fewer than ${tokens} tokens`);
  const idx = await SafetensorsIndex.open(dir);
  try {
    const emb = await idx.readF32("model.embed_tokens.weight");
    const ln = await idx.readF32("model.layers.0.input_layernorm.weight");
    const w = await idx.readF32(name);
    const h = cfg.hidden;
    const x = new Float32Array(tokens * h);
    for (let t = 0; t < tokens; t++) {
      const e = emb.subarray(ids[t] * h, (ids[t] + 1) * h);
      let ss = 0;
      for (const v of e) ss += v * v;
      const r = 1 / Math.sqrt(ss / h + cfg.rmsNormEps);
      for (let i = 0; i < h; i++) x[t * h + i] = e[i] * r * ln[i];
    }
    return { x, w, n: h, out: w.length / h };
  } finally {
    idx.close();
  }
}
