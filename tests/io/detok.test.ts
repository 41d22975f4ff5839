// Streaming detokenization and stop strings, on the embedded byte-level tokenizer (kjv-llama) and
// the Metaspace / byte-fallback one of stories260K.
import assert from "node:assert/strict";
import { StopFilter, TextStream } from "../../src/io/detok.ts";
import { Tokenizer } from "../../src/io/tokenizer.ts";
import { Rng } from "../../src/util/rng.ts";
import { fromFileUrl } from "../util.ts";
import { HAS_SHARED, STORIES } from "../shared.ts";

const KJV = fromFileUrl(new URL("../../fixtures/kjv-llama", import.meta.url));

/** Streams `gen` after `prompt`; returns each push's text (flush last). */
function stream(tok: Tokenizer, prompt: ArrayLike<number>, gen: ArrayLike<number>): string[] {
  const s = new TextStream(tok, prompt);
  const out = Array.from(gen, (id) => s.push(id));
  out.push(s.flush());
  return out;
}

/** decode(prompt + gen) minus decode(prompt), checking the first extends the second. */
function expected(tok: Tokenizer, prompt: ArrayLike<number>, gen: ArrayLike<number>): string {
  const p = tok.decode(prompt);
  const all = tok.decode([...Array.from(prompt), ...Array.from(gen)]);
  assert.ok(all.startsWith(p), `decode(prompt + gen) does not extend decode(prompt)`);
  return all.slice(p.length);
}

function ids(tok: Tokenizer, text: string, bos = false): number[] {
  return Array.from(tok.encode(text, { addBos: bos }));
}

/** A token sequence for `words` encoded one by one (not the canonical encoding of the text). */
function wordwise(tok: Tokenizer, words: string[]): number[] {
  return words.flatMap((w) => ids(tok, w));
}

const WORDS = [
  " the",
  " Lord",
  " said",
  ",",
  " café",
  " 😀",
  " naïve",
  " 中文",
  "中文中文",
  "\n",
  " é",
  "ñ",
];

function checkTokenizer(tok: Tokenizer) {
  const cases: [string, string][] = [
    ["In the beginning", " God created the heaven and the earth."],
    ["In the beginning", "time"],
    ["Once upon a", " time"],
    ["And God said", " 😀 café naïve 中文中文中文 🎉🎉 done"],
    ["Hi 中文", "中文 é"],
    ["café", "\n\nand then"],
  ];
  for (const [p, g] of cases) {
    for (const bos of [true, false]) {
      const prompt = ids(tok, p, bos);
      const gen = ids(tok, g);
      const pieces = stream(tok, prompt, gen);
      assert.equal(pieces.join(""), expected(tok, prompt, gen), `${p} | ${g}`);
      for (const piece of pieces) {
        assert.ok(!piece.includes("\uFFFD"), `half a character in ${JSON.stringify(piece)}`);
      }
    }
  }
  const rng = new Rng(17);
  for (let trial = 0; trial < 50; trial++) {
    const words = Array.from({ length: 1 + rng.int(30) }, () => WORDS[rng.int(WORDS.length)]);
    const prompt = wordwise(tok, ["And", ...words.slice(0, rng.int(4))]);
    const gen = wordwise(tok, words);
    const pieces = stream(tok, prompt, gen);
    assert.equal(pieces.join(""), expected(tok, prompt, gen), words.join("|"));
    for (const piece of pieces) assert.ok(!piece.includes("\uFFFD"), JSON.stringify(words));
  }
}

Deno.test("stream = decode(prompt + gen) - decode(prompt), byte-level tokenizer", async () => {
  checkTokenizer(await Tokenizer.load(KJV));
});

Deno.test({
  name: "stream = decode(prompt + gen) - decode(prompt), Metaspace / byte-fallback tokenizer",
  ignore: !HAS_SHARED,
  fn: async () => checkTokenizer(await Tokenizer.load(STORIES)),
});

Deno.test("byte-level: an emoji split over four byte tokens is printed whole", async () => {
  const tok = await Tokenizer.load(KJV);
  const prompt = ids(tok, "In the beginning", true);
  const gen = ids(tok, " 😀é");
  assert.ok(gen.length >= 6, "the fixture splits the emoji into bytes");
  const pieces = stream(tok, prompt, gen);
  // " " + 4 byte tokens of the emoji, then 2 of é
  const first = pieces.findIndex((p) => p.includes("😀"));
  assert.ok(first >= 0);
  for (const p of pieces.slice(0, first)) assert.ok(!p.includes("\uFFFD"));
  assert.equal(pieces.join(""), " 😀é");
  assert.deepEqual(pieces.slice(-3), ["", "é", ""]);
});

Deno.test("byte-level: an incomplete character at the end comes out at flush", async () => {
  const tok = await Tokenizer.load(KJV);
  const prompt = ids(tok, "Amen", true);
  const gen = ids(tok, "😀").slice(0, 2); // two of four bytes
  const s = new TextStream(tok, prompt);
  assert.equal(s.push(gen[0]), "");
  assert.equal(s.push(gen[1]), "");
  assert.equal(s.flush(), expected(tok, prompt, gen));
});

Deno.test({
  name: "byte fallback: é and runs of three-byte characters are never printed half",
  ignore: !HAS_SHARED,
  fn: async () => {
    const tok = await Tokenizer.load(STORIES);
    const byte = (b: number) =>
      tok.tokenToId(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`)!;
    const prompt = ids(tok, "Once upon a time", true);
    const s = new TextStream(tok, prompt);
    assert.equal(s.push(byte(0xc3)), "");
    assert.equal(s.push(byte(0xa9)), "é");
    // 中文中文中文: nine 3-byte characters in one byte run
    const run = [...new TextEncoder().encode("中文中文中文")].map(byte);
    const out: string[] = [];
    for (const id of run) out.push(s.push(id));
    assert.equal(out.join("") + s.flush(), "中文中文中文");
    assert.deepEqual(out.filter((t) => t !== ""), ["中", "文", "中", "文", "中", "文"]);
    // A prompt that ends inside a byte run, continued by the same run: the first window must not
    // start in the middle of a character.
    const p2 = ids(tok, "Hi 中文", true);
    const g2 = [...new TextEncoder().encode("文中")].map(byte);
    const pieces = stream(tok, p2, g2);
    assert.equal(pieces.join(""), "文中");
    assert.equal(expected(tok, p2, g2), "文中");
  },
});

Deno.test("StopFilter cuts at a stop string spanning two pushes", () => {
  const f = new StopFilter(["\n\n", "END"]);
  assert.deepEqual(f.push("Hello\n"), { text: "Hello", stopped: false });
  assert.deepEqual(f.push("\nmore"), { text: "", stopped: true });
  assert.deepEqual(f.push("after"), { text: "", stopped: true });
  assert.equal(f.flush(), "");
  const g = new StopFilter(["END"]);
  assert.deepEqual(g.push("a E"), { text: "a ", stopped: false });
  assert.deepEqual(g.push("N"), { text: "", stopped: false });
  assert.deepEqual(g.push("D tail"), { text: "", stopped: true });
});

Deno.test("StopFilter releases a held partial match that is not one", () => {
  const f = new StopFilter(["END"]);
  assert.deepEqual(f.push("abc EN"), { text: "abc ", stopped: false });
  assert.deepEqual(f.push("Z!"), { text: "ENZ!", stopped: false });
  assert.deepEqual(f.push("x E"), { text: "x ", stopped: false });
  assert.equal(f.flush(), "E");
  // overlapping: "aaab" holds "aa", then finds "aab" starting inside the held part
  const g = new StopFilter(["aab"]);
  assert.deepEqual(g.push("xaa"), { text: "x", stopped: false });
  assert.deepEqual(g.push("ab"), { text: "a", stopped: true });
  // the earliest of several stop strings wins
  const h = new StopFilter(["world", "lo w"]);
  assert.deepEqual(h.push("hello world"), { text: "hel", stopped: true });
  // no stop strings: everything passes at once
  const n = new StopFilter([]);
  assert.deepEqual(n.push("END"), { text: "END", stopped: false });
});

Deno.test("TextStream + StopFilter token by token stop before the stop string", async () => {
  const tok = await Tokenizer.load(KJV);
  const prompt = ids(tok, "In the beginning", true);
  const gen = ids(tok, " God created the heaven and the earth. And the earth was");
  const s = new TextStream(tok, prompt);
  const f = new StopFilter(["earth."]);
  let out = "";
  let used = 0;
  for (const id of gen) {
    used++;
    const r = f.push(s.push(id));
    out += r.text;
    if (r.stopped) break;
  }
  assert.equal(out, " God created the heaven and the ");
  assert.ok(used < gen.length, "stopped early");
});
