// Byte-level BPE trainer (the GPT-2 / Llama-3 style): the GPT-2 pre-tokenizer regex, GPT-2's
// byte-to-unicode map, merges learned from pair counts over the word-frequency table, ties
// broken by the smaller (left id, right id). Writes a Hugging Face tokenizer.json in the same
// ByteLevel layout as the shared tinyllama fixture, and a tokenizer_config.json.
import { translateRegex } from "../io/tokenizer.ts";

/** The GPT-2 pre-tokenizer pattern (as in the `tokenizers` crate's ByteLevel). */
export const GPT2_PATTERN =
  "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

export interface BpeOptions {
  /** Total vocabulary: 256 bytes + merges + special tokens. */
  vocabSize: number;
  /** Added special tokens, given the last ids (default <|begin_of_text|>, <|end_of_text|>). */
  specials?: string[];
  /** Pairs seen fewer times than this are never merged (default 2). */
  minFrequency?: number;
}

export interface BpeModel {
  /** Token strings (byte-level chars) by id, specials excluded. */
  tokens: string[];
  /** Merges in rank order, as pairs of token strings. */
  merges: [string, string][];
  specials: { id: number; content: string }[];
}

export const BOS = "<|begin_of_text|>";
export const EOS = "<|end_of_text|>";

/** GPT-2's byte -> printable char map (bytes 33..126, 161..172, 174..255 map to themselves). */
export function byteChars(): string[] {
  const out = new Array<string>(256);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    out[b] = String.fromCharCode(keep ? b : 256 + n++);
  }
  return out;
}

/** Pieces of `text` under the GPT-2 regex (matches and any gaps, in order). */
export function preTokenize(text: string): string[] {
  const re = new RegExp(translateRegex(GPT2_PATTERN), "gu");
  const out: string[] = [];
  let prev = 0;
  for (const m of text.matchAll(re)) {
    const a = m.index!;
    if (a > prev) out.push(text.slice(prev, a));
    if (m[0] !== "") out.push(m[0]);
    prev = a + m[0].length;
  }
  if (prev < text.length) out.push(text.slice(prev));
  return out;
}

/** Learns byte-level BPE merges from `text`. Deterministic for a given text and options. */
export function trainBpe(text: string, opts: BpeOptions): BpeModel {
  const specials = opts.specials ?? [BOS, EOS];
  const minFreq = opts.minFrequency ?? 2;
  const target = opts.vocabSize - specials.length;
  if (!(Number.isInteger(target) && target >= 256)) {
    throw new Error(`trainBpe: vocabSize ${opts.vocabSize} leaves fewer than 256 byte tokens`);
  }
  if (opts.vocabSize > 65536) throw new Error(`trainBpe: vocabSize ${opts.vocabSize} > 65536`);

  // Word-frequency table, words as byte sequences (first-seen order).
  const freq = new Map<string, number>();
  for (const p of preTokenize(text)) freq.set(p, (freq.get(p) ?? 0) + 1);
  const enc = new TextEncoder();
  const words: number[][] = [];
  const counts: number[] = [];
  for (const [w, c] of freq) {
    words.push([...enc.encode(w)]);
    counts.push(c);
  }

  const chars = byteChars();
  const tokens = chars.slice();
  const byString = new Map(tokens.map((t, i) => [t, i]));
  const merges: [string, string][] = [];

  const KEY = 65536;
  const pairCount = new Map<number, number>();
  const pairWords = new Map<number, Set<number>>();
  const addPairs = (wi: number, sign: number) => {
    const w = words[wi], c = counts[wi] * sign;
    for (let i = 0; i + 1 < w.length; i++) {
      const key = w[i] * KEY + w[i + 1];
      const n = (pairCount.get(key) ?? 0) + c;
      if (n === 0) pairCount.delete(key);
      else pairCount.set(key, n);
      if (sign > 0) {
        let s = pairWords.get(key);
        if (!s) pairWords.set(key, s = new Set());
        s.add(wi);
      }
    }
  };
  for (let wi = 0; wi < words.length; wi++) addPairs(wi, 1);

  while (tokens.length < target) {
    let best = -1, bestCount = 0;
    for (const [key, c] of pairCount) {
      if (c > bestCount || (c === bestCount && key < best)) {
        best = key;
        bestCount = c;
      }
    }
    if (best < 0 || bestCount < minFreq) break;
    const a = Math.floor(best / KEY), b = best % KEY;
    const s = tokens[a] + tokens[b];
    let id = byString.get(s);
    if (id === undefined) {
      id = tokens.length;
      tokens.push(s);
      byString.set(s, id);
    }
    merges.push([tokens[a], tokens[b]]);
    // Words are visited in index order so the result does not depend on Set order.
    const affected = [...(pairWords.get(best) ?? [])].sort((x, y) => x - y);
    pairWords.delete(best);
    for (const wi of affected) {
      const w = words[wi];
      let has = false;
      for (let i = 0; i + 1 < w.length; i++) {
        if (w[i] === a && w[i + 1] === b) {
          has = true;
          break;
        }
      }
      if (!has) continue;
      addPairs(wi, -1);
      const merged: number[] = [];
      for (let i = 0; i < w.length; i++) {
        if (i + 1 < w.length && w[i] === a && w[i + 1] === b) {
          merged.push(id);
          i++;
        } else {
          merged.push(w[i]);
        }
      }
      words[wi] = merged;
      addPairs(wi, 1);
    }
    pairCount.delete(best);
  }
  return {
    tokens,
    merges,
    specials: specials.map((content, i) => ({ id: tokens.length + i, content })),
  };
}

/** Total ids of a trained model (tokens + specials). */
export function bpeVocabSize(m: BpeModel): number {
  return m.tokens.length + m.specials.length;
}

function addedToken(s: { id: number; content: string }) {
  return {
    id: s.id,
    content: s.content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  };
}

/** tokenizer.json for a trained model (the first special is BOS in the post-processor). */
export function tokenizerJson(m: BpeModel): Record<string, unknown> {
  const bos = m.specials[0];
  const vocab: Record<string, number> = {};
  m.tokens.forEach((t, i) => (vocab[t] = i));
  const byteLevel = { add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: m.specials.map(addedToken),
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", ...byteLevel },
    post_processor: {
      type: "TemplateProcessing",
      single: [
        { SpecialToken: { id: bos.content, type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
      ],
      pair: [
        { SpecialToken: { id: bos.content, type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: bos.content, type_id: 1 } },
        { Sequence: { id: "B", type_id: 1 } },
      ],
      special_tokens: {
        [bos.content]: { id: bos.content, ids: [bos.id], tokens: [bos.content] },
      },
    },
    decoder: { type: "ByteLevel", ...byteLevel, add_prefix_space: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: m.merges,
    },
  };
}

/** tokenizer_config.json: BOS is the first special, EOS the second. */
export function tokenizerConfigJson(m: BpeModel, maxLength: number): Record<string, unknown> {
  const decoder: Record<string, unknown> = {};
  for (const s of m.specials) {
    const { id: _, ...rest } = addedToken(s);
    decoder[String(s.id)] = rest;
  }
  return {
    add_bos_token: true,
    add_eos_token: false,
    bos_token: m.specials[0].content,
    eos_token: m.specials[1]?.content ?? m.specials[0].content,
    clean_up_tokenization_spaces: false,
    model_max_length: maxLength,
    tokenizer_class: "PreTrainedTokenizerFast",
    added_tokens_decoder: decoder,
  };
}
