// The full-precision teacher for finetuning a compressed model: its top-k next-token
// distribution on each training window (for distillation), and text it writes itself by
// sampling (ClusComp's 1-bit recovery trains on teacher-generated text).
import { UserError } from "../errors.ts";
import { openModel } from "../format/open.ts";
import { getGpu, type Gpu } from "../gpu/device.ts";
import { Tokenizer } from "../io/tokenizer.ts";
import { LlamaModel } from "../model/model.ts";
import { generate, Runner } from "../model/runner.ts";
import { Rng } from "../util/rng.ts";
import type { TrainWindow } from "./data.ts";

export interface TeacherOptions {
  /** Called after each window with the count done. */
  onProgress?: (done: number, total: number) => void;
  /** GPU bytes the teacher may hold (LlamaModel's budget) when it is opened from a folder. */
  gpuBudget?: number;
}

/**
 * Top-k of softmax(logits / temperature) for each of `rows` rows of `logits` [rows, V]:
 * ids and probabilities [rows * k], most probable first (ties: lowest id first). The softmax
 * runs in float64 over the whole row, so each row's k probabilities sum to at most 1.
 */
export function topKRows(
  logits: Float32Array,
  rows: number,
  V: number,
  k: number,
  temperature: number,
  ids: Int32Array,
  probs: Float32Array,
  rowOffset = 0,
): void {
  const topL = new Float64Array(k);
  const topI = new Int32Array(k);
  for (let r = 0; r < rows; r++) {
    const row = logits.subarray(r * V, (r + 1) * V);
    let max = -Infinity;
    for (let v = 0; v < V; v++) {
      const x = row[v];
      if (!Number.isFinite(x)) throw new Error(`teacher: logit ${x} at row ${r}, token ${v}`);
      if (x > max) max = x;
    }
    let sum = 0;
    for (let v = 0; v < V; v++) sum += Math.exp((row[v] - max) / temperature);
    // Insertion into a descending list; a later id replaces only a strictly larger logit.
    let n = 0;
    for (let v = 0; v < V; v++) {
      const x = row[v];
      if (n === k && x <= topL[k - 1]) continue;
      let j = n < k ? n++ : k - 1;
      while (j > 0 && topL[j - 1] < x) {
        topL[j] = topL[j - 1];
        topI[j] = topI[j - 1];
        j--;
      }
      topL[j] = x;
      topI[j] = v;
    }
    const o = (rowOffset + r) * k;
    for (let j = 0; j < k; j++) {
      ids[o + j] = topI[j];
      probs[o + j] = Math.exp((topL[j] - max) / temperature) / sum;
    }
  }
}

/**
 * The teacher's top-k next-token distribution at each of the T = ids.length - 1 input positions
 * of each window, from softmax(logits / temperature), most probable first. `model` is a model
 * folder (opened, run and released here) or a LlamaModel the caller owns. Logits come from
 * LlamaModel.nll (the evaluation path) one window at a time; positions past the rows its first
 * logits chunk holds (a very large vocabulary) are computed by a Runner with a KV cache.
 * Returns new window objects with `teacher` set (ids and mask shared with the input).
 */
export async function teacherTopK(
  gpu: Gpu,
  model: string | LlamaModel,
  windows: TrainWindow[],
  k: number,
  temperature = 1,
  opts: TeacherOptions = {},
): Promise<TrainWindow[]> {
  if (!(Number.isFinite(temperature) && temperature > 0)) {
    throw new UserError(`teacher temperature must be a positive number, got ${temperature}`);
  }
  let opened: Awaited<ReturnType<typeof openModel>> | undefined;
  let m: LlamaModel;
  if (typeof model === "string") {
    opened = await openModel(model);
    if (opened.quant) {
      opened.index.close();
      throw new UserError(
        `${model}: the teacher must be a full-precision model folder, not a compressed one`,
      );
    }
    m = await LlamaModel.create(gpu, opened.cfg, opened.source, { gpuBudget: opts.gpuBudget });
  } else m = model;
  const V = m.cfg.vocab;
  if (!(Number.isSafeInteger(k) && k >= 1 && k <= V)) {
    if (opened) {
      m.release();
      opened.index.close();
    }
    throw new UserError(`teacher top-k must be an integer from 1 to the vocabulary ${V}, got ${k}`);
  }
  let runner: Runner | undefined;
  try {
    const out: TrainWindow[] = [];
    for (let i = 0; i < windows.length; i++) {
      const w = windows[i];
      const T = w.ids.length - 1;
      if (T < 1) throw new Error(`teacherTopK: window ${i} has ${w.ids.length} ids`);
      if (T > m.cfg.maxPositions) {
        throw new UserError(
          `teacher: windows of ${T} positions exceed the model's ${m.cfg.maxPositions}`,
        );
      }
      const input = w.ids.subarray(0, T);
      const ids = new Int32Array(T * k), probs = new Float32Array(T * k);
      const r = await m.nll([input], { keepFirstLogits: true });
      const first = r.firstLogits!;
      const rows = Math.min(T, first.length / V);
      topKRows(first, rows, V, k, temperature, ids, probs);
      if (rows < T) {
        runner ??= await Runner.create(m.gpu, m.cfg, m.src, { maxContext: T });
        runner.reset();
        let logits = await runner.feed(input.subarray(0, rows + 1));
        for (let t = rows; t < T; t++) {
          if (t > rows) logits = await runner.feed(input.subarray(t, t + 1));
          topKRows(logits, 1, V, k, temperature, ids, probs, t);
        }
      }
      out.push({ ...w, teacher: { k, ids, probs } });
      opts.onProgress?.(i + 1, windows.length);
    }
    return out;
  } finally {
    runner?.release();
    if (opened) {
      m.release();
      opened.index.close();
    }
  }
}

export interface TeacherTextOptions {
  /** Tokens to generate in all (an EOS that ends a document counts as one). */
  tokens: number;
  seed: number;
  /** Sampling temperature (0 = greedy). */
  temperature: number;
  /** Nucleus sampling mass (default 1 = off). */
  topP?: number;
  /** Top-k sampling (default 0 = off). */
  topK?: number;
  /** Text each document starts from (default ""), after BOS when the tokenizer has one. */
  prompt?: string;
  /** Between documents (default "\n\n"). */
  separator?: string;
  /** Default: the process-wide Gpu. */
  gpu?: Gpu;
  onProgress?: (tokens: number, total: number) => void;
}

/**
 * Text the model in `modelDir` writes itself: documents that each start from [BOS] + prompt and
 * are sampled (temperature, top-p, top-k; seeded, so the same seed gives the same text) until
 * EOS, then the next document starts, until `tokens` tokens are generated. A document that fills
 * the context continues from the last half of its context. Returns each document's text (prompt
 * included) joined by the separator.
 */
export async function teacherText(modelDir: string, o: TeacherTextOptions): Promise<string> {
  if (!(Number.isSafeInteger(o.tokens) && o.tokens >= 1)) {
    throw new UserError(`teacher text: token count must be a positive integer, got ${o.tokens}`);
  }
  if (!(Number.isFinite(o.temperature) && o.temperature >= 0)) {
    throw new UserError(`teacher text: temperature must be >= 0, got ${o.temperature}`);
  }
  const { cfg, source, index } = await openModel(modelDir);
  try {
    const tok = await Tokenizer.load(modelDir);
    const prompt = o.prompt ?? "";
    const start = Array.from(tok.encode(prompt, { addBos: true }));
    if (start.length === 0) {
      throw new UserError(`${modelDir}: the tokenizer has no BOS token: give a prompt`);
    }
    const gpu = o.gpu ?? await getGpu();
    const runner = await Runner.create(gpu, cfg, source);
    try {
      const ctx = runner.maxContext;
      if (start.length >= ctx) {
        throw new UserError(
          `teacher text: the prompt has ${start.length} tokens, the context only ${ctx}`,
        );
      }
      const rng = new Rng(o.seed ^ 0x7eac);
      const docs: string[] = [];
      let doc: number[] = []; // this document's generated ids
      let context = start;
      let produced = 0;
      const finish = () => docs.push(prompt + tok.decode(doc));
      while (produced < o.tokens) {
        const want = Math.min(o.tokens - produced, ctx - context.length);
        const r = await generate(runner, context, {
          maxNewTokens: want,
          temperature: o.temperature,
          topK: o.topK ?? 0,
          topP: o.topP ?? 1,
          seed: rng.nextU32(),
          eosId: tok.eosId,
        });
        doc.push(...r.ids);
        produced += r.ids.length;
        if (r.stopReason === "eos") {
          produced++;
          finish();
          doc = [];
          context = start;
        } else {
          const all = [...start, ...doc];
          context = all.slice(Math.max(0, all.length - Math.floor(ctx / 2)));
        }
        o.onProgress?.(Math.min(produced, o.tokens), o.tokens);
      }
      if (doc.length > 0 || docs.length === 0) finish();
      return docs.join(o.separator ?? "\n\n");
    } finally {
      runner.release();
    }
  } finally {
    index.close();
  }
}
