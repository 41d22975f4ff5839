// Hugging Face tokenizer.json BPE tokenizer: the SentencePiece style (Metaspace / Prepend+Replace,
// byte fallback) and the ByteLevel style (GPT-2, Llama-3), following the `tokenizers` crate.
import { UserError } from "../errors.ts";
import type { FileSource } from "./source.ts";

type Json = Record<string, unknown>;

export interface EncodeOptions {
  /** Prepend the BOS token (when the tokenizer has one). */
  addBos?: boolean;
}

/** A pre-tokenized piece; `start` marks a piece at offset 0 of the original text. */
interface Piece {
  s: string;
  start: boolean;
}

type Normalizer = (s: string) => string;
type PreTokenizer = (pieces: Piece[]) => Piece[];
type Decoder = (tokens: string[]) => string[];

interface AddedToken {
  id: number;
  content: string;
  singleWord: boolean;
  lstrip: boolean;
  rstrip: boolean;
}

/** Added tokens matched leftmost-longest, as HF's Aho-Corasick does. */
interface AddedMatcher {
  re: RegExp;
  byContent: Map<string, AddedToken>;
}

interface Segment {
  text: string;
  id?: number;
  start: number;
}

const META = "\u2581";
// Word cache bounds: words longer than this are not cached; the cache is cleared when full.
const CACHE_WORD_MAX = 256;
const CACHE_SIZE_MAX = 500_000;
// Words up to this many symbols use a plain best-pair scan instead of the heap.
const SHORT_WORD = 48;
const POS_SCALE = 2 ** 26;
const GPT2_PATTERN =
  "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
// Rust regex's \w, for single_word added tokens
const WORD_CHAR = /^[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}]/u;
const WORD_END = /[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}]$/u;

function isObj(x: unknown): x is Json {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

function escapeRegex(s: string): string {
  return s.replace(/[\\^$.*+?()[\]{}|/-]/g, (c) => `\\u{${c.codePointAt(0)!.toString(16)}}`);
}

/** Oniguruma pattern -> JS `u` regex: \s and \S become Unicode White_Space as in onig. */
export function translateRegex(src: string): string {
  let out = "";
  for (let i = 0; i < src.length; i++) {
    const c = src[i];
    if (c !== "\\" || i + 1 >= src.length) {
      out += c;
      continue;
    }
    const d = String.fromCodePoint(src.codePointAt(i + 1)!);
    i += d.length;
    if (d === "s") out += "\\p{White_Space}";
    else if (d === "S") out += "\\P{White_Space}";
    else if (/[A-Za-z0-9]/.test(d) || "^$\\.*+?()[]{}|/".includes(d)) out += c + d;
    else out += `\\u{${d.codePointAt(0)!.toString(16)}}`; // identity escape, invalid in u mode
  }
  return out;
}

/** GPT-2's byte -> printable char map. */
function byteLevelMap(): string[] {
  const out = new Array<string>(256);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    out[b] = String.fromCharCode(keep ? b : 256 + n++);
  }
  return out;
}

const BYTE_CHARS = byteLevelMap();
const CHAR_BYTES = new Map(BYTE_CHARS.map((c, b) => [c.charCodeAt(0), b]));
const utf8 = new TextEncoder();
const lossy = new TextDecoder("utf-8", { ignoreBOM: true });
const strict = new TextDecoder("utf-8", { ignoreBOM: true, fatal: true });

/** UTF-8 bytes of `s`, each written as its byte-level char. */
function toByteLevel(s: string): string {
  let out = "";
  for (let i = 0; i < s.length; i++) {
    let cp = s.charCodeAt(i);
    if (cp < 0x80) {
      out += BYTE_CHARS[cp];
      continue;
    }
    if (cp >= 0xd800 && cp < 0xdc00 && i + 1 < s.length) {
      const lo = s.charCodeAt(i + 1);
      if (lo >= 0xdc00 && lo < 0xe000) {
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        i++;
      }
    }
    if (cp >= 0xd800 && cp < 0xe000) cp = 0xfffd; // lone surrogate, as TextEncoder does
    if (cp < 0x800) {
      out += BYTE_CHARS[0xc0 | (cp >> 6)] + BYTE_CHARS[0x80 | (cp & 63)];
    } else if (cp < 0x10000) {
      out += BYTE_CHARS[0xe0 | (cp >> 12)] + BYTE_CHARS[0x80 | ((cp >> 6) & 63)] +
        BYTE_CHARS[0x80 | (cp & 63)];
    } else {
      out += BYTE_CHARS[0xf0 | (cp >> 18)] + BYTE_CHARS[0x80 | ((cp >> 12) & 63)] +
        BYTE_CHARS[0x80 | ((cp >> 6) & 63)] + BYTE_CHARS[0x80 | (cp & 63)];
    }
  }
  return out;
}

type Behavior = "Removed" | "Isolated" | "MergedWithPrevious" | "MergedWithNext" | "Contiguous";

/** HF `NormalizedString::split` with a regex pattern; empty pieces are dropped. */
function splitPiece(p: Piece, re: RegExp, behavior: Behavior, invert: boolean, out: Piece[]): void {
  const s = p.s;
  let prev = 0;
  re.lastIndex = 0;
  if (behavior === "Isolated") {
    // every match and every gap is a piece
    for (const m of s.matchAll(re)) {
      const a = m.index!;
      if (prev !== a) out.push({ s: s.slice(prev, a), start: p.start && prev === 0 });
      if (m[0] !== "") out.push({ s: m[0], start: p.start && a === 0 });
      prev = a + m[0].length;
    }
    if (prev !== s.length) out.push({ s: s.slice(prev), start: p.start && prev === 0 });
    return;
  }
  // [start, end, isMatch] covering s
  const segs: [number, number, boolean][] = [];
  for (const m of s.matchAll(re)) {
    const a = m.index!;
    if (prev !== a) segs.push([prev, a, invert]);
    segs.push([a, a + m[0].length, !invert]);
    prev = a + m[0].length;
  }
  if (prev !== s.length) segs.push([prev, s.length, invert]);
  let spans: [number, number, boolean][] = [];
  if (behavior === "Removed") spans = segs.filter((x) => !x[2]);
  else if (behavior === "Contiguous") {
    for (const x of segs) {
      const last = spans[spans.length - 1];
      if (last && last[2] === x[2]) last[1] = x[1];
      else spans.push([x[0], x[1], x[2]]);
    }
  } else if (behavior === "MergedWithPrevious") {
    let prevMatch = false;
    for (const x of segs) {
      const last = spans[spans.length - 1];
      if (x[2] && !prevMatch && last) last[1] = x[1];
      else spans.push([x[0], x[1], false]);
      prevMatch = x[2];
    }
  } else {
    let prevMatch = false;
    for (let i = segs.length - 1; i >= 0; i--) {
      const x = segs[i];
      const last = spans[spans.length - 1];
      if (x[2] && !prevMatch && last) last[0] = x[0];
      else spans.push([x[0], x[1], false]);
      prevMatch = x[2];
    }
    spans.reverse();
  }
  for (const [a, b] of spans) {
    if (b > a) out.push({ s: s.slice(a, b), start: p.start && a === 0 });
  }
}

/** Pops the smallest number of a binary min-heap. */
function heapPop(h: number[]): number {
  const top = h[0];
  const last = h.pop()!;
  const n = h.length;
  if (n > 0) {
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      const c = r < n && h[r] < h[l] ? r : l;
      if (h[c] >= last) break;
      h[i] = h[c];
      i = c;
    }
    h[i] = last;
  }
  return top;
}

function heapPush(h: number[], v: number): void {
  let i = h.length;
  h.push(v);
  while (i > 0) {
    const p = (i - 1) >> 1;
    if (h[p] <= v) break;
    h[i] = h[p];
    i = p;
  }
  h[i] = v;
}

export class Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number | null;
  readonly eosId: number | null;

  private readonly file: string;
  private readonly vocab = new Map<string, number>();
  private readonly idToTok: (string | undefined)[] = [];
  private readonly added = new Map<string, number>();
  private readonly addedById = new Map<number, string>();
  private readonly rawAdded: AddedMatcher | null;
  private readonly normAdded: AddedMatcher | null;
  private readonly normalizer: Normalizer | null;
  private readonly preTokenizer: PreTokenizer | null;
  private readonly decoder: Decoder | null;
  // BPE model
  private readonly pairRank = new Map<number, number>(); // a * pairScale + b -> merge rank
  private readonly mergeNew: number[] = []; // rank -> merged id
  private readonly pairScale: number;
  private readonly unkId: number | null;
  private readonly fuseUnk: boolean;
  private readonly byteFallback: number[] | null; // byte -> <0xXX> id
  private readonly ignoreMerges: boolean;
  private readonly prefix: string;
  private readonly suffix: string;
  private readonly canChunk: boolean;
  private readonly cache = new Map<string, number[]>();

  private constructor(json: Json, file: string, config: unknown) {
    this.file = file;
    const model = json.model;
    if (!isObj(model)) this.fail("model", "is missing");
    const type = model.type ?? ("merges" in model ? "BPE" : undefined);
    if (type !== "BPE") {
      this.fail("model.type", `${JSON.stringify(type)} is not supported (only BPE)`);
    }
    if (!isObj(model.vocab)) this.fail("model.vocab", "is missing");
    let maxId = -1;
    for (const [tok, id] of Object.entries(model.vocab)) {
      if (typeof id !== "number" || !Number.isInteger(id) || id < 0) {
        this.fail("model.vocab", `has a bad id for ${JSON.stringify(tok)}`);
      }
      this.vocab.set(tok, id);
      this.idToTok[id] = tok;
      if (id > maxId) maxId = id;
    }
    const addedList = json.added_tokens ?? [];
    if (!Array.isArray(addedList)) this.fail("added_tokens", "is not a list");
    const raw: AddedToken[] = [], norm: AddedToken[] = [];
    for (const t of addedList) {
      if (!isObj(t) || typeof t.content !== "string" || typeof t.id !== "number") {
        this.fail("added_tokens", "has an entry without content and id");
      }
      this.added.set(t.content, t.id);
      this.addedById.set(t.id, t.content);
      if (t.id > maxId) maxId = t.id;
      if (t.content === "") continue;
      const a = {
        id: t.id,
        content: t.content,
        singleWord: t.single_word === true,
        lstrip: t.lstrip === true,
        rstrip: t.rstrip === true,
      };
      // HF default: special tokens are not normalized
      const normalized = typeof t.normalized === "boolean" ? t.normalized : t.special !== true;
      (normalized ? norm : raw).push(a);
    }
    this.vocabSize = maxId + 1;
    this.pairScale = maxId + 1;

    const str = (x: unknown, d: string) => (typeof x === "string" ? x : d);
    this.prefix = str(model.continuing_subword_prefix, "");
    this.suffix = str(model.end_of_word_suffix, "");
    this.ignoreMerges = model.ignore_merges === true;
    this.fuseUnk = model.fuse_unk === true;
    const unk = model.unk_token;
    this.unkId = typeof unk === "string" ? this.vocab.get(unk) ?? null : null;
    if (model.byte_fallback === true) {
      const ids: number[] = [];
      for (let b = 0; b < 256; b++) {
        const id = this.vocab.get(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
        if (id === undefined) break;
        ids.push(id);
      }
      this.byteFallback = ids.length === 256 ? ids : null;
    } else {
      this.byteFallback = null;
    }
    this.loadMerges(model.merges);
    // One long word may be cut before each ▁ that follows another char when no token spans
    // such a boundary: merges never cross it, so the result is the same and long texts stay fast.
    let chunk = this.prefix === "" && this.suffix === "";
    for (const tok of this.vocab.keys()) {
      if (!chunk) break;
      if (/[^\u2581]\u2581/u.test(tok)) chunk = false;
    }
    this.canChunk = chunk;

    this.normalizer = json.normalizer == null
      ? null
      : this.makeNormalizer(json.normalizer, "normalizer");
    this.preTokenizer = json.pre_tokenizer == null
      ? null
      : this.makePreTokenizer(json.pre_tokenizer, "pre_tokenizer");
    this.decoder = json.decoder == null ? null : this.makeDecoder(json.decoder, "decoder");
    this.rawAdded = this.makeMatcher(raw);
    this.normAdded = this.makeMatcher(
      norm.map((a) => ({
        ...a,
        content: this.normalizer ? this.normalizer(a.content) : a.content,
      })),
    );

    const cfg = isObj(config) ? config : {};
    this.bosId = this.specialId(cfg.bos_token) ?? this.templateBos(json.post_processor);
    this.eosId = this.specialId(cfg.eos_token);
  }

  /** Reads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json`. */
  static async load(dir: string | FileSource): Promise<Tokenizer> {
    if (typeof dir !== "string") return Tokenizer.loadFrom(dir);
    const path = `${dir}/tokenizer.json`;
    let text: string;
    try {
      text = await Deno.readTextFile(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) throw new UserError(`Tokenizer not found: ${path}`);
      throw new UserError(`Cannot read ${path}: ${(e as Error).message}`);
    }
    const json = parseJson(text, path);
    const cfgPath = `${dir}/tokenizer_config.json`;
    let config: unknown = undefined;
    try {
      config = parseJson(await Deno.readTextFile(cfgPath), cfgPath);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    return Tokenizer.fromJson(json, path, config);
  }

  /** The same from any FileSource (an HTTP folder in a browser page). */
  static async loadFrom(src: FileSource): Promise<Tokenizer> {
    const path = src.path("tokenizer.json");
    const text = await src.text("tokenizer.json");
    if (text === null) throw new UserError(`Tokenizer not found: ${path}`);
    const cfgPath = src.path("tokenizer_config.json");
    const cfgText = await src.text("tokenizer_config.json");
    const config = cfgText === null ? undefined : parseJson(cfgText, cfgPath);
    return Tokenizer.fromJson(parseJson(text, path), path, config);
  }

  /** Builds from parsed tokenizer.json (`file` names it in errors) and tokenizer_config.json. */
  static fromJson(json: unknown, file: string, config?: unknown): Tokenizer {
    if (!isObj(json)) throw new UserError(`${file}: not a tokenizer.json object`);
    return new Tokenizer(json, file, config);
  }

  encode(text: string, opts: EncodeOptions = {}): Int32Array {
    const out: number[] = [];
    if (opts.addBos && this.bosId !== null) out.push(this.bosId);
    for (const seg of this.splitAdded(text, this.rawAdded)) {
      if (seg.id !== undefined) {
        out.push(seg.id);
        continue;
      }
      const normalized = this.normalizer ? this.normalizer(seg.text) : seg.text;
      for (const sub of this.splitAdded(normalized, this.normAdded)) {
        if (sub.id !== undefined) {
          out.push(sub.id);
          continue;
        }
        let pieces: Piece[] = [{ s: sub.text, start: seg.start === 0 && sub.start === 0 }];
        if (this.preTokenizer) pieces = this.preTokenizer(pieces);
        for (const p of pieces) this.bpe(p.s, out);
      }
    }
    return Int32Array.from(out);
  }

  decode(ids: ArrayLike<number>): string {
    const toks: string[] = new Array(ids.length);
    for (let i = 0; i < ids.length; i++) toks[i] = this.idToToken(ids[i]);
    return this.decoder ? this.decoder(toks).join("") : toks.join(" ");
  }

  idToToken(id: number): string {
    const t = this.addedById.get(id) ?? this.idToTok[id];
    if (t === undefined) throw new RangeError(`token id ${id} is not in ${this.file}`);
    return t;
  }

  tokenToId(tok: string): number | undefined {
    return this.added.get(tok) ?? this.vocab.get(tok);
  }

  // ---- construction helpers

  private fail(field: string, what: string): never {
    throw new UserError(`${this.file}: ${field} ${what}`);
  }

  private loadMerges(merges: unknown): void {
    if (merges === undefined) return;
    if (!Array.isArray(merges)) this.fail("model.merges", "is not a list");
    for (let rank = 0; rank < merges.length; rank++) {
      const m = merges[rank];
      let pair: unknown[];
      if (typeof m === "string") pair = m.split(" ");
      else if (Array.isArray(m)) pair = m;
      else this.fail(`model.merges[${rank}]`, "is neither a string nor a pair");
      const [a, b] = pair;
      if (pair.length !== 2 || typeof a !== "string" || typeof b !== "string") {
        this.fail(`model.merges[${rank}]`, `is not a pair: ${JSON.stringify(m)}`);
      }
      const ia = this.vocab.get(a), ib = this.vocab.get(b);
      const merged = this.vocab.get(a + b.slice(this.prefix.length));
      if (ia === undefined || ib === undefined || merged === undefined) {
        this.fail(`model.merges[${rank}]`, `${JSON.stringify(m)} uses a token not in model.vocab`);
      }
      this.pairRank.set(ia * this.pairScale + ib, rank);
      this.mergeNew[rank] = merged;
    }
  }

  private makeMatcher(tokens: AddedToken[]): AddedMatcher | null {
    if (tokens.length === 0) return null;
    const sorted = [...tokens].sort((x, y) => y.content.length - x.content.length);
    const re = new RegExp(sorted.map((t) => escapeRegex(t.content)).join("|"), "gu");
    return { re, byContent: new Map(tokens.map((t) => [t.content, t])) };
  }

  private specialId(tok: unknown): number | null {
    const content = isObj(tok) ? tok.content : tok;
    if (typeof content !== "string") return null;
    return this.tokenToId(content) ?? null;
  }

  /** BOS from a TemplateProcessing post-processor (possibly inside a Sequence). */
  private templateBos(pp: unknown): number | null {
    if (!isObj(pp)) return null;
    if (pp.type === "Sequence" && Array.isArray(pp.processors)) {
      for (const p of pp.processors) {
        const id = this.templateBos(p);
        if (id !== null) return id;
      }
      return null;
    }
    if (pp.type !== "TemplateProcessing" || !Array.isArray(pp.single)) return null;
    const first = pp.single[0];
    if (!isObj(first) || !isObj(first.SpecialToken)) return null;
    const name = first.SpecialToken.id;
    const spec = isObj(pp.special_tokens) && typeof name === "string"
      ? pp.special_tokens[name]
      : undefined;
    if (isObj(spec) && Array.isArray(spec.ids) && typeof spec.ids[0] === "number") {
      return spec.ids[0];
    }
    return this.specialId(name);
  }

  private pattern(p: unknown, field: string): RegExp {
    if (isObj(p) && typeof p.String === "string") return new RegExp(escapeRegex(p.String), "gu");
    if (isObj(p) && typeof p.Regex === "string") {
      try {
        return new RegExp(translateRegex(p.Regex), "gu");
      } catch (e) {
        this.fail(`${field}.Regex`, `cannot be used as a JS regex: ${(e as Error).message}`);
      }
    }
    this.fail(field, "is neither {String} nor {Regex}");
  }

  private makeNormalizer(n: unknown, field: string): Normalizer {
    if (!isObj(n)) this.fail(field, "is not an object");
    switch (n.type) {
      case "Sequence": {
        if (!Array.isArray(n.normalizers)) this.fail(`${field}.normalizers`, "is not a list");
        const fs = n.normalizers.map((x, i) =>
          this.makeNormalizer(x, `${field}.normalizers[${i}]`)
        );
        return (s) => fs.reduce((acc, f) => f(acc), s);
      }
      case "Prepend": {
        const pre = String(n.prepend);
        return (s) => (s === "" ? s : pre + s);
      }
      case "Replace": {
        const re = this.pattern(n.pattern, `${field}.pattern`);
        const content = String(n.content);
        return (s) => s.replace(re, () => content);
      }
      case "NFC":
      case "NFD":
      case "NFKC":
      case "NFKD": {
        const form = n.type;
        return (s) => s.normalize(form);
      }
      case "Lowercase":
        return (s) => s.toLowerCase();
      case "Strip": {
        const left = n.left !== false, right = n.right !== false;
        return (s) => {
          if (left) s = s.replace(/^\p{White_Space}+/u, "");
          if (right) s = s.replace(/\p{White_Space}+$/u, "");
          return s;
        };
      }
      default:
        this.fail(`${field}.type`, `${JSON.stringify(n.type)} is not supported`);
    }
  }

  private makePreTokenizer(p: unknown, field: string): PreTokenizer {
    if (!isObj(p)) this.fail(field, "is not an object");
    const each = (f: (p: Piece, out: Piece[]) => void): PreTokenizer => (pieces) => {
      const out: Piece[] = [];
      for (const x of pieces) f(x, out);
      return out;
    };
    switch (p.type) {
      case "Sequence": {
        if (!Array.isArray(p.pretokenizers)) this.fail(`${field}.pretokenizers`, "is not a list");
        const fs = p.pretokenizers.map((x, i) =>
          this.makePreTokenizer(x, `${field}.pretokenizers[${i}]`)
        );
        return (pieces) => fs.reduce((acc, f) => f(acc), pieces);
      }
      case "Split": {
        const re = this.pattern(p.pattern, `${field}.pattern`);
        const behavior = p.behavior as Behavior;
        const ok = ["Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"];
        if (!ok.includes(behavior)) {
          this.fail(`${field}.behavior`, `${JSON.stringify(p.behavior)} is not supported`);
        }
        const invert = p.invert === true;
        return each((x, out) => splitPiece(x, re, behavior, invert, out));
      }
      case "ByteLevel": {
        const prefixSpace = p.add_prefix_space === true;
        const re = p.use_regex === false ? null : new RegExp(translateRegex(GPT2_PATTERN), "gu");
        return each((x, out) => {
          const s = prefixSpace && !x.s.startsWith(" ") ? " " + x.s : x.s;
          const parts: Piece[] = [];
          if (re) splitPiece({ s, start: x.start }, re, "Isolated", false, parts);
          else parts.push({ s, start: x.start });
          for (const q of parts) out.push({ s: toByteLevel(q.s), start: q.start });
        });
      }
      case "Metaspace": {
        const rep = typeof p.replacement === "string" ? p.replacement : META;
        let scheme = p.prepend_scheme;
        if (scheme === undefined) scheme = p.add_prefix_space === false ? "never" : "always";
        if (scheme !== "always" && scheme !== "first" && scheme !== "never") {
          this.fail(`${field}.prepend_scheme`, `${JSON.stringify(scheme)} is not supported`);
        }
        const split = p.split !== false;
        const re = new RegExp(escapeRegex(rep), "gu");
        return each((x, out) => {
          let s = x.s.replaceAll(" ", rep);
          if (
            !s.startsWith(rep) && (scheme === "always" || (scheme === "first" && x.start))
          ) s = rep + s;
          if (split) splitPiece({ s, start: x.start }, re, "MergedWithNext", false, out);
          else out.push({ s, start: x.start });
        });
      }
      case "Digits": {
        const re = p.individual_digits === true ? /\p{N}/gu : /\p{N}+/gu;
        return each((x, out) => splitPiece(x, re, "Isolated", false, out));
      }
      case "WhitespaceSplit":
        return each((x, out) => splitPiece(x, /\p{White_Space}+/gu, "Removed", false, out));
      default:
        this.fail(`${field}.type`, `${JSON.stringify(p.type)} is not supported`);
    }
  }

  private makeDecoder(d: unknown, field: string): Decoder {
    if (!isObj(d)) this.fail(field, "is not an object");
    switch (d.type) {
      case "Sequence": {
        if (!Array.isArray(d.decoders)) this.fail(`${field}.decoders`, "is not a list");
        const fs = d.decoders.map((x, i) => this.makeDecoder(x, `${field}.decoders[${i}]`));
        return (toks) => fs.reduce((acc, f) => f(acc), toks);
      }
      case "Replace": {
        const re = this.pattern(d.pattern, `${field}.pattern`);
        const content = String(d.content);
        return (toks) => toks.map((t) => t.replace(re, () => content));
      }
      case "ByteFallback":
        return decodeByteFallback;
      case "Fuse":
        return (toks) => [toks.join("")];
      case "Strip": {
        const c = String(d.content);
        const start = Number(d.start ?? 0), stop = Number(d.stop ?? 0);
        return (toks) =>
          toks.map((t) => {
            const chars = [...t];
            let a = 0, b = chars.length;
            while (a < start && a < b && chars[a] === c) a++;
            while (chars.length - b < stop && b > a && chars[b - 1] === c) b--;
            return chars.slice(a, b).join("");
          });
      }
      case "Metaspace": {
        const rep = typeof d.replacement === "string" ? d.replacement : META;
        let scheme = d.prepend_scheme;
        if (scheme === undefined) scheme = d.add_prefix_space === false ? "never" : "always";
        return (toks) =>
          toks.map((t, i) => t.replaceAll(rep, i === 0 && scheme !== "never" ? "" : " "));
      }
      case "ByteLevel":
        return decodeByteLevel;
      default:
        this.fail(`${field}.type`, `${JSON.stringify(d.type)} is not supported`);
    }
  }

  // ---- encoding

  /** Splits `text` on added tokens (HF's find_matches), keeping empty-free text segments. */
  private splitAdded(text: string, m: AddedMatcher | null): Segment[] {
    if (text === "") return [];
    if (!m) return [{ text, start: 0 }];
    const out: Segment[] = [];
    let from = 0;
    m.re.lastIndex = 0;
    for (const hit of text.matchAll(m.re)) {
      const tok = m.byContent.get(hit[0])!;
      let a = hit.index!, b = a + hit[0].length;
      if (tok.singleWord) {
        const before = WORD_END.test(text.slice(Math.max(0, a - 2), a));
        const after = WORD_CHAR.test(text.slice(b, b + 2));
        if (before || after) continue;
      }
      if (tok.lstrip) {
        while (a > from && /\p{White_Space}/u.test(text[a - 1])) a--;
      }
      if (tok.rstrip) {
        while (b < text.length && /\p{White_Space}/u.test(text[b])) b++;
      }
      if (a > from) out.push({ text: text.slice(from, a), start: from });
      out.push({ text: text.slice(a, b), id: tok.id, start: a });
      from = b;
    }
    if (from < text.length) out.push({ text: text.slice(from), start: from });
    return out;
  }

  /** BPE of one pre-tokenized word, appending ids to `out`. */
  private bpe(word: string, out: number[]): void {
    if (this.ignoreMerges) {
      const id = this.vocab.get(word);
      if (id !== undefined) {
        out.push(id);
        return;
      }
    }
    if (!this.canChunk || word.length <= 64) {
      this.bpeCached(word, out);
      return;
    }
    let from = 0;
    for (let i = 1; i < word.length; i++) {
      if (word.charCodeAt(i) === 0x2581 && word.charCodeAt(i - 1) !== 0x2581) {
        this.bpeCached(word.slice(from, i), out);
        from = i;
      }
    }
    this.bpeCached(word.slice(from), out);
  }

  private bpeCached(word: string, out: number[]): void {
    let ids = this.cache.get(word);
    if (ids === undefined) {
      ids = this.mergeWord(word);
      if (word.length <= CACHE_WORD_MAX) {
        if (this.cache.size >= CACHE_SIZE_MAX) this.cache.clear();
        this.cache.set(word, ids);
      }
    }
    for (let i = 0; i < ids.length; i++) out.push(ids[i]);
  }

  /** Initial symbols (chars, byte fallback, unk) then merges by rank, as HF's `merge_word`. */
  private mergeWord(word: string): number[] {
    const sym: number[] = [];
    let unkPending = false;
    const chars = [...word];
    for (let i = 0; i < chars.length; i++) {
      let s = chars[i];
      if (i > 0 && this.prefix) s = this.prefix + s;
      if (i === chars.length - 1 && this.suffix) s += this.suffix;
      const id = this.vocab.get(s);
      if (id !== undefined) {
        if (unkPending) sym.push(this.unkId!);
        unkPending = false;
        sym.push(id);
      } else if (this.byteFallback) {
        if (unkPending) sym.push(this.unkId!);
        unkPending = false;
        for (const b of utf8.encode(s)) sym.push(this.byteFallback[b]);
      } else if (this.unkId !== null) {
        if (unkPending && !this.fuseUnk) sym.push(this.unkId);
        unkPending = true;
      } else {
        const cp = s.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0");
        throw new UserError(
          `${this.file}: cannot encode U+${cp}: not in model.vocab, no byte_fallback, no unk_token`,
        );
      }
    }
    if (unkPending) sym.push(this.unkId!);
    if (sym.length < 2) return sym;
    return sym.length <= SHORT_WORD ? this.mergeShort(sym) : this.mergeLong(sym);
  }

  /** Repeatedly merges the lowest-rank adjacent pair (leftmost on ties). */
  private mergeShort(sym: number[]): number[] {
    const scale = this.pairScale;
    for (;;) {
      let best = Infinity, at = -1;
      for (let i = 0; i + 1 < sym.length; i++) {
        const r = this.pairRank.get(sym[i] * scale + sym[i + 1]);
        if (r !== undefined && r < best) {
          best = r;
          at = i;
        }
      }
      if (at < 0) return sym;
      sym[at] = this.mergeNew[best];
      sym.splice(at + 1, 1);
    }
  }

  /** The same merge order with a linked list and a heap keyed by (rank, position). */
  private mergeLong(init: number[]): number[] {
    const n = init.length;
    if (n >= POS_SCALE) throw new UserError(`a word of ${n} symbols is too long to encode`);
    const scale = this.pairScale;
    const sym = Int32Array.from(init);
    const next = new Int32Array(n), prev = new Int32Array(n);
    const alive = new Uint8Array(n).fill(1);
    const heap: number[] = [];
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
      if (i + 1 < n) {
        const r = this.pairRank.get(sym[i] * scale + sym[i + 1]);
        if (r !== undefined) heapPush(heap, r * POS_SCALE + i);
      }
    }
    while (heap.length > 0) {
      const key = heapPop(heap);
      const rank = Math.floor(key / POS_SCALE), pos = key - rank * POS_SCALE;
      if (!alive[pos]) continue;
      const q = next[pos];
      if (q < 0 || this.pairRank.get(sym[pos] * scale + sym[q]) !== rank) continue; // stale
      sym[pos] = this.mergeNew[rank];
      alive[q] = 0;
      const nq = next[q];
      next[pos] = nq;
      if (nq >= 0) prev[nq] = pos;
      const p = prev[pos];
      if (p >= 0) {
        const r = this.pairRank.get(sym[p] * scale + sym[pos]);
        if (r !== undefined) heapPush(heap, r * POS_SCALE + p);
      }
      if (nq >= 0) {
        const r = this.pairRank.get(sym[pos] * scale + sym[nq]);
        if (r !== undefined) heapPush(heap, r * POS_SCALE + pos);
      }
    }
    const out: number[] = [];
    for (let i = 0; i >= 0; i = next[i]) out.push(sym[i]);
    return out;
  }
}

function parseJson(text: string, path: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new UserError(`${path}: invalid JSON (${(e as Error).message})`);
  }
}

/** `<0xXX>` runs become their UTF-8 text, or one U+FFFD per byte when invalid. */
function decodeByteFallback(toks: string[]): string[] {
  const out: string[] = [];
  let bytes: number[] = [];
  const flush = () => {
    if (bytes.length === 0) return;
    try {
      out.push(strict.decode(Uint8Array.from(bytes)));
    } catch {
      for (let i = 0; i < bytes.length; i++) out.push("\ufffd");
    }
    bytes = [];
  };
  for (const t of toks) {
    if (t.length === 6 && /^<0x[0-9A-Fa-f]{2}>$/.test(t)) {
      bytes.push(parseInt(t.slice(3, 5), 16));
    } else {
      flush();
      out.push(t);
    }
  }
  flush();
  return out;
}

/** Byte-level chars back to bytes (a token with other chars keeps its own UTF-8), lossy UTF-8. */
function decodeByteLevel(toks: string[]): string[] {
  let buf = new Uint8Array(1024);
  let n = 0;
  const put = (b: number) => {
    if (n === buf.length) {
      const grown = new Uint8Array(buf.length * 2);
      grown.set(buf);
      buf = grown;
    }
    buf[n++] = b;
  };
  for (const t of toks) {
    let ok = true;
    for (let i = 0; i < t.length; i++) {
      if (!CHAR_BYTES.has(t.charCodeAt(i))) {
        ok = false;
        break;
      }
    }
    if (ok) { for (let i = 0; i < t.length; i++) put(CHAR_BYTES.get(t.charCodeAt(i))!); }
    else for (const b of utf8.encode(t)) put(b);
  }
  return [lossy.decode(buf.subarray(0, n))];
}
