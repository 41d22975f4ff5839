// The byte-level BPE trainer: deterministic, round-trips through the project's Tokenizer, and
// writes files that Tokenizer.load reads.
import assert from "node:assert/strict";
import {
  BOS,
  bpeVocabSize,
  EOS,
  preTokenize,
  tokenizerConfigJson,
  tokenizerJson,
  trainBpe,
} from "../../src/train/bpe.ts";
import { Tokenizer } from "../../src/io/tokenizer.ts";

const TEXT = `Genesis 1
In the beginning God created the heaven and the earth.
And the earth was without form, and void; and darkness was upon the face of the deep.
And the Spirit of God moved upon the face of the waters.
And God said, Let there be light: and there was light.

Genesis 2
Thus the heavens and the earth were finished, and all the host of them.
And on the seventh day God ended his work which he had made; and he rested on the 7th day.
  Indented   spaces,\ttabs\r\nand CRLF; naïve café — ✓ 😀 ’quotes’ 1234 it's we'll
`;

Deno.test("pre-tokenizer pieces cover the text in order", () => {
  assert.equal(preTokenize(TEXT).join(""), TEXT);
  assert.deepEqual(preTokenize("And God said, Let"), ["And", " God", " said", ",", " Let"]);
});

Deno.test("BPE training is deterministic and fills the vocabulary", () => {
  const a = trainBpe(TEXT, { vocabSize: 320 });
  const b = trainBpe(TEXT, { vocabSize: 320 });
  assert.equal(JSON.stringify(tokenizerJson(a)), JSON.stringify(tokenizerJson(b)));
  assert.equal(bpeVocabSize(a), 320);
  assert.deepEqual(a.specials, [{ id: 318, content: BOS }, { id: 319, content: EOS }]);
  assert.equal(a.merges.length, 318 - 256);
  // The most frequent pair within words comes first ("t h": the, earth, there, ...).
  assert.deepEqual(a.merges[0], ["t", "h"]);
  // Small vocabularies are prefixes of larger ones (same merge order).
  const small = trainBpe(TEXT, { vocabSize: 280 });
  assert.deepEqual(small.merges, a.merges.slice(0, small.merges.length));
});

Deno.test("BPE stops at min frequency and rejects a vocabulary under 256 + specials", () => {
  const m = trainBpe("ab ab ab cd", { vocabSize: 1000 });
  // Only pairs seen twice: "a b", then " " + "ab" (as "Ġ" + "ab").
  assert.deepEqual(m.merges, [["a", "b"], ["Ġ", "ab"]]);
  assert.throws(() => trainBpe("x", { vocabSize: 257 }), /fewer than 256/);
});

Deno.test("trained tokenizer loads with Tokenizer.load and round-trips", async () => {
  const m = trainBpe(TEXT, { vocabSize: 320 });
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(tokenizerJson(m), null, 2));
    await Deno.writeTextFile(
      `${dir}/tokenizer_config.json`,
      JSON.stringify(tokenizerConfigJson(m, 256)),
    );
    const tok = await Tokenizer.load(dir);
    assert.equal(tok.vocabSize, 320);
    assert.equal(tok.bosId, 318);
    assert.equal(tok.eosId, 319);
    const ids = tok.encode(TEXT);
    assert.equal(tok.decode(ids), TEXT);
    assert.ok(ids.length < new TextEncoder().encode(TEXT).length * 0.6, `${ids.length} tokens`);
    for (const s of ["", "unseen words: zebra quokka", "\u{1F600}\u{1F600} \n\n  x", "a\u0301"]) {
      assert.equal(tok.decode(tok.encode(s)), s);
    }
    assert.deepEqual([...tok.encode("the", { addBos: true })].slice(0, 1), [318]);
    // A merged word is one token: " the" occurs often enough.
    assert.equal(tok.encode(" the").length, 1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
