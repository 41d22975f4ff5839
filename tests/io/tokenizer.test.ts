import assert from "node:assert/strict";
import { join } from "node:path";
import { UserError } from "../../src/errors.ts";
import { Tokenizer, translateRegex } from "../../src/io/tokenizer.ts";
import { Rng } from "../../src/util/rng.ts";
import { HAS_SHARED, readReference, STORIES, TINYLLAMA, TINYSTORIES, WIKI } from "../shared.ts";

function isUser(...parts: string[]) {
  return (e: unknown) => {
    assert.ok(e instanceof UserError, `expected UserError, got ${e}`);
    for (const p of parts) assert.ok(e.message.includes(p), `"${e.message}" lacks "${p}"`);
    assert.ok(!e.message.includes("\n"), "message is one line");
    return true;
  };
}

const BYTE_TOKENS = Array.from(
  { length: 256 },
  (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`,
);

/** A tiny Llama-2 style tokenizer.json: Prepend+Replace normalizer, byte fallback. */
function metaspaceJson(): Record<string, unknown> {
  const tokens = ["<unk>", "<s>", "</s>", ...BYTE_TOKENS, "\u2581", "a", "b", "c", "\u2581a", "ab"];
  tokens.push("\u2581ab", "aa");
  const vocab = Object.fromEntries(tokens.map((t, i) => [t, i]));
  return {
    version: "1.0",
    added_tokens: [
      { id: 0, content: "<unk>", special: true, normalized: false },
      { id: 1, content: "<s>", special: true, normalized: false },
      { id: 2, content: "</s>", special: true, normalized: false },
    ],
    normalizer: {
      type: "Sequence",
      normalizers: [
        { type: "Prepend", prepend: "\u2581" },
        { type: "Replace", pattern: { String: " " }, content: "\u2581" },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } },
    },
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: "\u2581" }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    },
    model: {
      type: "BPE",
      unk_token: "<unk>",
      fuse_unk: true,
      byte_fallback: true,
      vocab,
      merges: [["\u2581", "a"], ["a", "b"], ["\u2581a", "b"], ["a", "a"]],
    },
  };
}

/** A tiny GPT-2 style tokenizer.json: ByteLevel pre-tokenizer and decoder. */
function byteLevelJson(): Record<string, unknown> {
  const chars: string[] = [];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    chars.push(String.fromCharCode(keep ? b : 256 + n++));
  }
  const tokens = [...chars, "\u0120h", "\u0120hi", "th", "the"];
  const vocab = Object.fromEntries(tokens.map((t, i) => [t, i]));
  return {
    added_tokens: [{ id: 260, content: "<|x|>", special: true, normalized: false }],
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, use_regex: true },
    decoder: { type: "ByteLevel" },
    model: {
      type: "BPE",
      vocab,
      merges: ["\u0120 h", "\u0120h i", "t h", "th e"],
    },
  };
}

Deno.test("byte fallback encodes an unknown char as its UTF-8 bytes and decodes it back", () => {
  const tok = Tokenizer.fromJson(metaspaceJson(), "meta.json");
  const ids = tok.encode("ab é");
  assert.deepEqual(
    Array.from(ids, (i) => tok.idToToken(i)),
    ["\u2581ab", "\u2581", "<0xC3>", "<0xA9>"],
  );
  assert.equal(tok.decode(ids), "ab é");
  assert.equal(tok.bosId, 1, "BOS from the post-processor when there is no config");
  assert.equal(tok.eosId, null);
  assert.equal(tok.vocabSize, 267);
  assert.equal(tok.tokenToId("\u2581ab"), 265);
  assert.equal(tok.tokenToId("zz"), undefined);
});

Deno.test("merges apply by rank, leftmost first on ties", () => {
  const tok = Tokenizer.fromJson(metaspaceJson(), "meta.json");
  // "▁aaa": (▁,a) has rank 0, then (a,a) leaves "▁a" "aa"
  assert.deepEqual(Array.from(tok.encode("aaa"), (i) => tok.idToToken(i)), ["\u2581a", "aa"]);
  assert.deepEqual(Array.from(tok.encode("baaa"), (i) => tok.idToToken(i)), [
    "\u2581",
    "b",
    "aa",
    "a",
  ]);
});

Deno.test("an added token in the middle of text is matched before BPE and decoded as itself", () => {
  const tok = Tokenizer.fromJson(metaspaceJson(), "meta.json");
  const ids = tok.encode("ab<s>ab", { addBos: true });
  // the normalizer runs on each side separately, as in HF, so both sides get a ▁
  assert.deepEqual(Array.from(ids, (i) => tok.idToToken(i)), [
    "<s>",
    "\u2581ab",
    "<s>",
    "\u2581ab",
  ]);
  assert.equal(tok.decode(ids), "<s> ab<s> ab");

  const bl = Tokenizer.fromJson(byteLevelJson(), "bl.json");
  const ids2 = bl.encode("the<|x|> hi");
  assert.deepEqual(Array.from(ids2, (i) => bl.idToToken(i)), ["the", "<|x|>", "\u0120hi"]);
  assert.equal(bl.decode(ids2), "the<|x|> hi");
});

Deno.test("added tokens honour lstrip, rstrip and single_word", () => {
  const json = byteLevelJson();
  (json.added_tokens as unknown[]).push(
    { id: 261, content: "<m>", lstrip: true, rstrip: true, normalized: false },
    { id: 262, content: "xx", single_word: true, normalized: false },
  );
  const tok = Tokenizer.fromJson(json, "bl.json");
  const toks = (s: string) => Array.from(tok.encode(s), (i) => tok.idToToken(i));
  assert.deepEqual(toks("a  <m> b"), ["a", "<m>", "b"]);
  assert.deepEqual(toks("axx xx"), ["a", "x", "x", "\u0120", "xx"]);
});

Deno.test("the empty string encodes to nothing, or to BOS alone", () => {
  for (const json of [metaspaceJson(), byteLevelJson()]) {
    const tok = Tokenizer.fromJson(json, "t.json", { bos_token: "<s>" });
    assert.deepEqual(Array.from(tok.encode("")), []);
    assert.equal(tok.decode([]), "");
  }
  const tok = Tokenizer.fromJson(metaspaceJson(), "meta.json");
  assert.deepEqual(Array.from(tok.encode("", { addBos: true })), [1]);
});

Deno.test("byte-level encoding maps bytes to GPT-2 chars and round-trips any text", () => {
  const tok = Tokenizer.fromJson(byteLevelJson(), "bl.json");
  assert.deepEqual(Array.from(tok.encode(" hi\n")), [257, 10]);
  for (const s of ["a  b\t\r\n\u00a0x", "日本語 🙂", "\ufeffbom", "it's 123,456"]) {
    assert.equal(tok.decode(tok.encode(s)), s);
  }
});

Deno.test("a Metaspace pre-tokenizer splits before each ▁ and prepends one per scheme", () => {
  const json = metaspaceJson();
  json.normalizer = null;
  json.pre_tokenizer = {
    type: "Metaspace",
    replacement: "\u2581",
    prepend_scheme: "first",
    split: true,
  };
  json.decoder = { type: "Metaspace", replacement: "\u2581", prepend_scheme: "first", split: true };
  const tok = Tokenizer.fromJson(json, "meta.json");
  const ids = tok.encode("ab  ab<s>ab");
  // "first": no ▁ after the added token
  assert.deepEqual(Array.from(ids, (i) => tok.idToToken(i)), [
    "\u2581ab",
    "\u2581",
    "\u2581ab",
    "<s>",
    "ab",
  ]);
  assert.equal(tok.decode(ids), "ab  ab<s>ab");
});

Deno.test("long words merge exactly like a naive lowest-rank-pair BPE", () => {
  const json = metaspaceJson();
  json.normalizer = null;
  const model = json.model as { vocab: Record<string, number>; merges: string[][] };
  // more merges over a, b, c so that long words do real work
  const extra = [["b", "c"], ["c", "a"], ["bc", "a"], ["a", "bc"], ["ca", "b"], ["aa", "b"]];
  for (const [x, y] of extra) {
    if (model.vocab[x + y] === undefined) model.vocab[x + y] = Object.keys(model.vocab).length;
    model.merges.push([x, y]);
  }
  const tok = Tokenizer.fromJson(json, "meta.json");
  const rank = new Map(model.merges.map(([x, y], i) => [`${x} ${y}`, i]));
  const naive = (word: string) => {
    const sym = [...word];
    for (;;) {
      let best = Infinity, at = -1;
      for (let i = 0; i + 1 < sym.length; i++) {
        const r = rank.get(`${sym[i]} ${sym[i + 1]}`);
        if (r !== undefined && r < best) [best, at] = [r, i];
      }
      if (at < 0) return sym;
      sym.splice(at, 2, sym[at] + sym[at + 1]);
    }
  };
  const rng = new Rng(7);
  for (let trial = 0; trial < 200; trial++) {
    const len = 1 + Math.floor(rng.next() * 300);
    let w = "";
    for (let i = 0; i < len; i++) w += "abc"[Math.floor(rng.next() * 3)];
    const got = Array.from(tok.encode(w), (i) => tok.idToToken(i));
    assert.deepEqual(got, naive(w), `word ${w}`);
  }
});

Deno.test("Llama-3 split pattern translates to a JS regex with the same pieces", () => {
  const llama3 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  const re = new RegExp(translateRegex(llama3), "gu");
  const pieces = [..."I'M here's 12345\n\n x\u0085\u0085y".matchAll(re)].map((m) => m[0]);
  // U+0085 is \s for Oniguruma but not for JS: it must not end up in a punctuation piece
  assert.deepEqual(pieces, [
    "I",
    "'M",
    " here",
    "'s",
    " ",
    "123",
    "45",
    "\n\n",
    " x",
    "\u0085",
    "\u0085y",
  ]);
});

Deno.test("missing or unsupported tokenizer files are UserErrors naming file and field", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assert.rejects(() => Tokenizer.load(dir), isUser(join(dir, "tokenizer.json")));
    const json = metaspaceJson();
    (json.model as Record<string, unknown>).type = "Unigram";
    assert.throws(() => Tokenizer.fromJson(json, "f.json"), isUser("f.json", "model.type"));
    const json2 = byteLevelJson();
    json2.pre_tokenizer = {
      type: "Sequence",
      pretokenizers: [{ type: "ByteLevel" }, { type: "BertPreTokenizer" }],
    };
    assert.throws(
      () => Tokenizer.fromJson(json2, "g.json"),
      isUser("g.json", "pre_tokenizer.pretokenizers[1].type", "BertPreTokenizer"),
    );
    await Deno.writeTextFile(join(dir, "tokenizer.json"), "{oops");
    await assert.rejects(() => Tokenizer.load(dir), isUser(join(dir, "tokenizer.json")));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---- real fixtures

const FIXTURES = [
  { name: "stories260K", dir: STORIES },
  { name: "tinyllama-6.8m", dir: TINYLLAMA },
];
const skip = !HAS_SHARED;
if (skip) console.warn("tokenizer fixture tests skipped: ../shared is absent");

interface TokRef {
  tokenizer_tests: { text: string; ids_with_bos: number[]; tokens: string[] }[];
  perplexity: Record<string, { n_tokens: number }>;
  wiki128_window0: { input_ids: number[] };
}

function firstDiff(a: string, b: string): string {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  const ctx = (s: string) => JSON.stringify(s.slice(Math.max(0, i - 20), i + 20));
  return `first difference at char ${i} of ${b.length}: got ${ctx(a)} want ${ctx(b)}`;
}

for (const { name, dir } of FIXTURES) {
  Deno.test({
    name: `${name}: reference strings give the reference ids and tokens`,
    ignore: skip,
    fn: async () => {
      const tok = await Tokenizer.load(dir);
      const ref = readReference(dir) as unknown as TokRef;
      assert.ok(ref.tokenizer_tests.length > 0);
      for (const t of ref.tokenizer_tests) {
        const ids = Array.from(tok.encode(t.text, { addBos: true }));
        assert.deepEqual(ids, t.ids_with_bos, JSON.stringify(t.text));
        assert.deepEqual(ids.map((i) => tok.idToToken(i)), t.tokens, JSON.stringify(t.text));
        assert.equal(tok.decode(ids.slice(1)), t.text);
      }
    },
  });

  Deno.test({
    name: `${name}: whole wiki.test.raw gives the reference count and first window`,
    ignore: skip,
    fn: async () => {
      const tok = await Tokenizer.load(dir);
      const ref = readReference(dir) as unknown as TokRef;
      const text = (await Deno.readTextFile(WIKI)).replaceAll("\r\n", "\n");
      const t0 = performance.now();
      const ids = tok.encode(text);
      const ms = performance.now() - t0;
      console.log(
        `${name}: encoded wiki.test.raw (${text.length} chars) into ${ids.length} tokens in ${
          ms.toFixed(0)
        } ms`,
      );
      assert.equal(ids.length, ref.perplexity.wikitext2_test_raw.n_tokens);
      assert.deepEqual(Array.from(ids.subarray(0, 128)), ref.wiki128_window0.input_ids);
    },
  });

  Deno.test({
    name: `${name}: decode(encode(s)) reproduces tinystories_val.txt`,
    ignore: skip,
    fn: async () => {
      const tok = await Tokenizer.load(dir);
      const text = await Deno.readTextFile(TINYSTORIES);
      const back = tok.decode(tok.encode(text));
      if (back !== text) assert.fail(`${name}: round trip differs, ${firstDiff(back, text)}`);
    },
  });
}

Deno.test({
  name: "stories260K: the reference TinyStories text gives 392017 tokens",
  ignore: skip,
  fn: async () => {
    const tok = await Tokenizer.load(STORIES);
    const ref = readReference(STORIES) as unknown as TokRef;
    const raw = await Deno.readTextFile(TINYSTORIES);
    const text = raw.split("<|endoftext|>").map((s) => s.trim()).filter((s) => s !== "").join("\n");
    const want = ref.perplexity.tinystories_val_first1000.n_tokens;
    assert.equal(want, 392017);
    assert.equal(tok.encode(text).length, want);
    // the config names the same BOS and EOS as the vocabulary
    assert.equal(tok.bosId, 1);
    assert.equal(tok.eosId, 2);
  },
});
