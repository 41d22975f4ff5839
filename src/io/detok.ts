// Streaming detokenization (text as tokens arrive, never half a character) and stop strings.
import type { Tokenizer } from "./tokenizer.ts";

const REPLACEMENT = "\uFFFD";
// Prompt tokens decoded before the first generated one, so that decoders that treat the first
// token specially (Metaspace's strip of its leading space) do not see the generated text first.
const CONTEXT_TOKENS = 4;

/** The part of a tokenizer that TextStream needs. */
export type Decoder = Pick<Tokenizer, "decode">;

/**
 * Turns generated token ids into text as they arrive. The concatenation of every push() and the
 * final flush() is exactly decode(prompt + generated) minus decode(prompt): spacing at the prompt
 * boundary is what the full decode gives (a Metaspace "▁word" after the prompt keeps its space).
 *
 * Method (as Hugging Face text-generation-inference does): decode a short window of ids
 * [prefix, end) and the already-printed part [prefix, read); the new text is the difference; after
 * printing, the window moves to start at the chunk just printed (so there is always at least one
 * token of context, which keeps spacing right with decoders that strip the first token's space).
 * While the window's text ends in U+FFFD (a UTF-8 character still missing bytes, from byte-level
 * or byte-fallback tokens) nothing is printed and the offsets stay, so a character is never split.
 * Each push decodes O(window) tokens, not the whole sequence.
 */
export class TextStream {
  private readonly ids: number[];
  private prefix: number;
  private read: number;

  constructor(private readonly tok: Decoder, prompt: ArrayLike<number> = []) {
    this.ids = Array.from(prompt);
    this.read = this.ids.length;
    // Start the window a few prompt tokens back, at a token whose decoding from there is the tail
    // of the prompt's full decoding (not inside a character split across byte tokens).
    const full = this.ids.length > 0 ? tok.decode(this.ids) : "";
    let p = Math.max(0, this.read - CONTEXT_TOKENS);
    while (p > 0 && !full.endsWith(tok.decode(this.ids.slice(p)))) p--;
    this.prefix = p;
  }

  /** Adds one generated id; returns the text that became printable (often ""). */
  push(id: number): string {
    this.ids.push(id);
    return this.emit(false);
  }

  /** The text still held back (an incomplete character at the very end), as the decoder gives it. */
  flush(): string {
    return this.emit(true);
  }

  private emit(final: boolean): string {
    if (this.read === this.ids.length) return "";
    const done = this.tok.decode(this.ids.slice(this.prefix, this.read));
    const all = this.tok.decode(this.ids.slice(this.prefix));
    if (!final && all.endsWith(REPLACEMENT)) return "";
    // When the window's text does not extend the printed text (a byte-fallback run that is
    // invalid so far turns every byte of it into U+FFFD), wait; at the end print what is new.
    if (!all.startsWith(done) && !final) return "";
    const text = all.startsWith(done) ? all.slice(done.length) : all.slice(commonPrefix(all, done));
    // The next window starts at this chunk, which began after complete text: a character
    // boundary, so decoding from there agrees with decoding from the start.
    this.prefix = this.read;
    this.read = this.ids.length;
    return text;
  }
}

function commonPrefix(a: string, b: string): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

/**
 * Cuts a text stream before the first occurrence of any stop string. push() returns the text
 * that is certainly not part of a stop string: a suffix that could still begin one is held back
 * until the next push decides it. When a stop string completes, the text before it is returned
 * with `stopped: true`, and everything after is dropped.
 */
export class StopFilter {
  private readonly stops: string[];
  private buf = "";
  private done = false;

  constructor(stops: readonly string[]) {
    this.stops = stops.filter((s) => s.length > 0);
  }

  get stopped(): boolean {
    return this.done;
  }

  push(text: string): { text: string; stopped: boolean } {
    if (this.done) return { text: "", stopped: true };
    this.buf += text;
    let cut = -1;
    for (const s of this.stops) {
      const i = this.buf.indexOf(s);
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) {
      const out = this.buf.slice(0, cut);
      this.buf = "";
      this.done = true;
      return { text: out, stopped: true };
    }
    const hold = this.partialLength();
    const out = this.buf.slice(0, this.buf.length - hold);
    this.buf = this.buf.slice(this.buf.length - hold);
    return { text: out, stopped: false };
  }

  /** The held-back text at the end of the stream (no stop string followed). */
  flush(): string {
    const out = this.done ? "" : this.buf;
    this.buf = "";
    return out;
  }

  /** Length of the longest suffix of buf that is a proper prefix of some stop string. */
  private partialLength(): number {
    let best = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, this.buf.length); k > best; k--) {
        if (this.buf.endsWith(s.slice(0, k))) {
          best = k;
          break;
        }
      }
    }
    return best;
  }
}
