// Training data for whole-model finetuning: a text file, JSON Lines of {"text"} records or
// Stanford Alpaca {"instruction", "input", "output"} records, tokenized and cut into windows of
// seqlen + 1 ids (inputs ids[0..T-1], next-token targets ids[1..T]).
//
// - text: the whole file tokenized once without special tokens (as GPTQ-style evaluation does),
//   cut into floor((n - 1) / seqlen) non-overlapping windows with stride seqlen: window w holds
//   ids[w * seqlen .. (w + 1) * seqlen], so consecutive windows share one boundary id (the last
//   id of one is the first input of the next) and every id after the first is a target exactly
//   once. The tail that does not fill a window is dropped.
// - jsonl {"text"}: each record is [BOS] + its tokens + [EOS] (each when the tokenizer has it),
//   the records concatenated ("packed", no padding) and cut as the text format; a target that is
//   a record's BOS gets mask 0 (it is not predictable text).
// - alpaca: one example per window, prompt from the Stanford Alpaca template (the with-input or
//   no-input variant), tokenized as [BOS] + prompt, then the output + [EOS] tokenized separately
//   (so the prompt's tokens are those a generation from that prompt sees). Mask 1 exactly on
//   targets that are response tokens, the closing EOS included. Too long: the response keeps up
//   to half the window's budget plus whatever the prompt leaves; the prompt is cut from its
//   start (after BOS), so its end ("### Response:\n") stays next to the response; a response
//   longer than that is cut at its end (losing the EOS). Short: padded on the right with the pad
//   id (EOS, else 0), mask 0.
import { UserError } from "../errors.ts";
import { readText } from "../io/text.ts";
import type { Tokenizer } from "../io/tokenizer.ts";
import { Rng } from "../util/rng.ts";

import type { TrainWindow } from "./codebook_trainer.ts";

export type { TrainWindow };

export type DataFormat = "text" | "jsonl" | "alpaca";

export interface TrainDataOptions {
  /** Positions per window (T); each window holds seqlen + 1 ids. */
  seqlen: number;
  /** Default "auto": .jsonl / .json files by their first record's keys, anything else text. */
  format?: "auto" | DataFormat;
  /** When given, the windows are returned in an order shuffled with it; otherwise file order. */
  seed?: number;
}

export interface TrainData {
  windows: TrainWindow[];
  format: DataFormat;
  /** Tokens the file gave (BOS / EOS added by the format included, before cutting). */
  tokens: number;
  /** Targets with mask 1 over all windows (the tokens the loss covers). */
  counted: number;
  /** Records read (JSON Lines); 0 for text. */
  records: number;
  /** Tokens in no window (text / jsonl: the tail shorter than a window; alpaca: cut off). */
  dropped: number;
  /** Alpaca examples longer than a window. */
  truncated: number;
}

/** Stanford Alpaca's prompt templates (tatsu-lab/stanford_alpaca, train.py PROMPT_DICT). */
export const ALPACA_PROMPT_INPUT =
  "Below is an instruction that describes a task, paired with an input that provides further " +
  "context. Write a response that appropriately completes the request.\n\n" +
  "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";
export const ALPACA_PROMPT_NO_INPUT =
  "Below is an instruction that describes a task. Write a response that appropriately " +
  "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n";

/** The Alpaca prompt for a record: the with-input template unless input is missing or blank. */
export function alpacaPrompt(instruction: string, input?: string | null): string {
  if (input == null || input.trim() === "") {
    return ALPACA_PROMPT_NO_INPUT.replace("{instruction}", () => instruction);
  }
  return ALPACA_PROMPT_INPUT.replace("{instruction}", () => instruction)
    .replace("{input}", () => input);
}

interface Rec {
  /** Where it is, for errors: "file:line" or "file: record N". */
  at: string;
  obj: Record<string, unknown>;
}

function typeName(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  return typeof v === "object" ? "an object" : `a ${typeof v}`;
}

/** JSON Lines records (blank lines skipped), or the elements of one JSON array (a .json file). */
function parseRecords(path: string, text: string): Rec[] {
  const out: Rec[] = [];
  if (text.trimStart().startsWith("[")) {
    let arr: unknown;
    try {
      arr = JSON.parse(text);
    } catch (e) {
      throw new UserError(`${path}: malformed JSON array (${(e as Error).message})`);
    }
    if (!Array.isArray(arr)) throw new UserError(`${path}: expected a JSON array of records`);
    arr.forEach((obj, i) => {
      const at = `${path}: record ${i + 1}`;
      if (typeof obj !== "object" || obj === null || Array.isArray(obj)) {
        throw new UserError(`${at}: expected a JSON object, got ${typeName(obj)}`);
      }
      out.push({ at, obj: obj as Record<string, unknown> });
    });
    if (out.length === 0) throw new UserError(`${path}: the JSON array holds no records`);
    return out;
  }
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line.trim() === "") continue;
    const at = `${path}:${i + 1}`;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch (e) {
      throw new UserError(`${at}: malformed JSON line (${(e as Error).message})`);
    }
    if (typeof obj !== "object" || obj === null || Array.isArray(obj)) {
      throw new UserError(`${at}: expected a JSON object, got ${typeName(obj)}`);
    }
    out.push({ at, obj: obj as Record<string, unknown> });
  }
  if (out.length === 0) throw new UserError(`${path}: file is empty`);
  return out;
}

/** A required non-empty string field (or, with `optional`, a string, null or absent). */
function field(r: Rec, name: string, optional = false): string | undefined {
  if (!(name in r.obj) || (optional && r.obj[name] === null)) {
    if (optional) return undefined;
    throw new UserError(`${r.at}: missing field "${name}"`);
  }
  const v = r.obj[name];
  if (typeof v !== "string") {
    throw new UserError(`${r.at}: field "${name}" must be a string, got ${typeName(v)}`);
  }
  if (!optional && v.trim() === "") throw new UserError(`${r.at}: field "${name}" is empty`);
  return v;
}

/** The format of `path` under "auto": by extension, then the first record's keys. */
function detect(path: string, text: string): { format: DataFormat; records?: Rec[] } {
  if (!/\.jsonl?$/i.test(path)) return { format: "text" };
  const records = parseRecords(path, text);
  const first = records[0];
  if ("instruction" in first.obj) return { format: "alpaca", records };
  if ("text" in first.obj) return { format: "jsonl", records };
  throw new UserError(
    `${first.at}: cannot tell the format: a record needs a "text" field (JSON Lines text) or ` +
      `"instruction" and "output" fields (Alpaca)`,
  );
}

/** Windows of seqlen + 1 ids with stride seqlen over `ids`; too short -> UserError. */
function packWindows(
  ids: Int32Array,
  seqlen: number,
  path: string,
  what: string,
): Int32Array[] {
  const count = Math.floor((ids.length - 1) / seqlen);
  if (ids.length < seqlen + 1 || count < 1) {
    throw new UserError(
      `${path}: ${what} gives ${ids.length} tokens, fewer than one training window needs ` +
        `(seqlen ${seqlen} + 1 = ${seqlen + 1})`,
    );
  }
  const out: Int32Array[] = [];
  for (let w = 0; w < count; w++) out.push(ids.slice(w * seqlen, w * seqlen + seqlen + 1));
  return out;
}

/** Fisher-Yates shuffle with the project's seeded Rng (a copy). */
function shuffled<T>(items: T[], seed: number): T[] {
  const out = items.slice();
  const rng = new Rng(seed ^ 0x7a11);
  for (let i = out.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

/** Reads `path` as training data; every problem with the file is one UserError naming it. */
export async function loadTrainData(
  path: string,
  tokenizer: Tokenizer,
  opts: TrainDataOptions,
): Promise<TrainData> {
  const seqlen = opts.seqlen;
  if (!Number.isSafeInteger(seqlen) || seqlen < 1) {
    throw new UserError(`sequence length must be a positive integer, got ${seqlen}`);
  }
  const text = await readText(path);
  const requested = opts.format ?? "auto";
  if (!["auto", "text", "jsonl", "alpaca"].includes(requested)) {
    throw new UserError(
      `data format must be auto, text, jsonl or alpaca, got ${JSON.stringify(requested)}`,
    );
  }
  let format: DataFormat;
  let records: Rec[] | undefined;
  if (requested === "auto") ({ format, records } = detect(path, text));
  else format = requested;
  if (format !== "text") records ??= parseRecords(path, text);

  let data: TrainData;
  if (format === "text") {
    const ids = tokenizer.encode(text);
    const windows = packWindows(ids, seqlen, path, "the text").map((ids) => ({ ids }));
    data = {
      windows,
      format,
      tokens: ids.length,
      counted: windows.length * seqlen,
      records: 0,
      dropped: ids.length - (windows.length * seqlen + 1),
      truncated: 0,
    };
  } else if (format === "jsonl") data = jsonlWindows(path, records!, tokenizer, seqlen);
  else data = alpacaWindows(records!, tokenizer, seqlen);
  if (opts.seed !== undefined) data.windows = shuffled(data.windows, opts.seed);
  return data;
}

function jsonlWindows(
  path: string,
  records: Rec[],
  tokenizer: Tokenizer,
  seqlen: number,
): TrainData {
  const parts: Int32Array[] = [];
  let n = 0;
  const bos = tokenizer.bosId, eos = tokenizer.eosId;
  for (const r of records) {
    const body = tokenizer.encode(field(r, "text")!);
    const ids = new Int32Array(body.length + (bos !== null ? 1 : 0) + (eos !== null ? 1 : 0));
    let o = 0;
    if (bos !== null) ids[o++] = bos;
    ids.set(body, o);
    o += body.length;
    if (eos !== null) ids[o++] = eos;
    parts.push(ids);
    n += ids.length;
  }
  const all = new Int32Array(n);
  let o = 0;
  for (const p of parts) {
    all.set(p, o);
    o += p.length;
  }
  let counted = 0;
  const windows = packWindows(
    all,
    seqlen,
    path,
    `${records.length} record${records.length === 1 ? "" : "s"}`,
  ).map((ids) => {
    const w: TrainWindow = { ids };
    let mask: Uint8Array | undefined;
    for (let t = 0; t < seqlen; t++) {
      if (bos !== null && ids[t + 1] === bos) {
        mask ??= new Uint8Array(seqlen).fill(1);
        mask[t] = 0;
      }
    }
    if (mask) w.mask = mask;
    counted += mask ? mask.reduce((a, b) => a + b, 0) : seqlen;
    return w;
  });
  return {
    windows,
    format: "jsonl",
    tokens: n,
    counted,
    records: records.length,
    dropped: n - (windows.length * seqlen + 1),
    truncated: 0,
  };
}

function alpacaWindows(records: Rec[], tokenizer: Tokenizer, seqlen: number): TrainData {
  const L = seqlen + 1;
  const bos = tokenizer.bosId, eos = tokenizer.eosId;
  const pad = eos ?? 0;
  const nb = bos !== null ? 1 : 0;
  const budget = L - nb;
  const windows: TrainWindow[] = [];
  let tokens = 0, counted = 0, dropped = 0, truncated = 0;
  for (const r of records) {
    const instruction = field(r, "instruction")!;
    const input = field(r, "input", true);
    const output = field(r, "output")!;
    const prompt = tokenizer.encode(alpacaPrompt(instruction, input));
    const body = tokenizer.encode(output);
    const resp = new Int32Array(body.length + (eos !== null ? 1 : 0));
    resp.set(body);
    if (eos !== null) resp[body.length] = eos;
    const P = prompt.length, R = resp.length;
    tokens += nb + P + R;
    // The response keeps at least half the budget (or all of it when shorter); the prompt keeps
    // its last keepP tokens.
    const keepR = Math.min(R, budget - Math.min(P, Math.floor(budget / 2)));
    const keepP = Math.min(P, budget - keepR);
    if (keepP < P || keepR < R) {
      truncated++;
      dropped += P - keepP + R - keepR;
    }
    const ids = new Int32Array(L).fill(pad);
    if (bos !== null) ids[0] = bos;
    ids.set(prompt.subarray(P - keepP), nb);
    ids.set(resp.subarray(0, keepR), nb + keepP);
    // Target t is ids[t + 1]: a response token when nb + keepP <= t + 1 < nb + keepP + keepR.
    const mask = new Uint8Array(seqlen);
    const first = nb + keepP - 1;
    for (let t = Math.max(0, first); t < first + keepR && t < seqlen; t++) {
      mask[t] = 1;
      counted++;
    }
    windows.push({ ids, mask });
  }
  return {
    windows,
    format: "alpaca",
    tokens,
    counted,
    records: records.length,
    dropped,
    truncated,
  };
}

/**
 * Splits off an evaluation set: `size` in (0, 1) is a fraction of the windows (rounded, at
 * least 1), an integer >= 1 a count, 0 nothing. The held-out windows are drawn with the seed;
 * both parts keep the input's order. At least one training window must remain.
 */
export function splitHeldOut(
  windows: TrainWindow[],
  size: number,
  seed: number,
): { train: TrainWindow[]; eval: TrainWindow[] } {
  let count: number;
  if (Number.isFinite(size) && size > 0 && size < 1) {
    count = Math.max(1, Math.round(windows.length * size));
  } else if (Number.isSafeInteger(size) && size >= 0) count = size;
  else {
    throw new UserError(
      `held-out size must be a fraction in (0, 1) or a whole number of windows, got ${size}`,
    );
  }
  if (count === 0) return { train: windows.slice(), eval: [] };
  if (count >= windows.length) {
    throw new UserError(
      `holding out ${count} of ${windows.length} windows for evaluation leaves none to train on`,
    );
  }
  const order = shuffled(windows.map((_, i) => i), seed ^ 0x4e1d);
  const held = new Set(order.slice(0, count));
  return {
    train: windows.filter((_, i) => !held.has(i)),
    eval: windows.filter((_, i) => held.has(i)),
  };
}
