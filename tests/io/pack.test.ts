// The packed code stream of src/io/pack.ts against a bit-by-bit reference: every width 1..16,
// counts that are not multiples of 32, codes at 0 and 2^b - 1.
import assert from "node:assert/strict";
import {
  bytesToWords,
  codeBits,
  codebookGpuBytes,
  firstCodeAtLeast,
  packCodes,
  packedBytes,
  packedWords,
  unpackCodes,
  wordsToBytes,
} from "../../src/io/pack.ts";
import { Rng } from "../../src/util/rng.ts";

/** The stream written one bit at a time: bit j of code k is bit k * b + j, LSB of byte 0 first. */
function referenceBytes(codes: number[], bits: number): Uint8Array {
  const out = new Uint8Array(Math.ceil((codes.length * bits) / 8));
  codes.forEach((c, k) => {
    for (let j = 0; j < bits; j++) {
      const bit = k * bits + j;
      if ((c >> j) & 1) out[bit >> 3] |= 1 << (bit & 7);
    }
  });
  return out;
}

/** Random codes < 2^bits with 0 and 2^bits - 1 planted at the start, middle and end. */
function codesFor(count: number, bits: number, seed: number): number[] {
  const rng = new Rng(seed);
  const top = 2 ** bits - 1;
  const codes = Array.from({ length: count }, () => rng.int(top + 1));
  for (const at of [1, count >> 1, count - 2]) if (at > 0 && at < count - 1) codes[at] = 0;
  codes[0] = top;
  codes[count - 1] = top;
  return codes;
}

for (let bits = 1; bits <= 16; bits++) {
  Deno.test(`pack: ${bits}-bit codes round-trip and match the bit-by-bit stream`, () => {
    for (const count of [1, 5, 31, 33, 97, 1000, 4099]) {
      const codes = codesFor(count, bits, bits * 7919 + count);
      const words = packCodes(codes, bits);
      assert.equal(words.length, packedWords(count, bits));
      const bytes = wordsToBytes(words, count, bits);
      assert.equal(bytes.length, packedBytes(count, bits));
      assert.deepEqual(bytes, referenceBytes(codes, bits), `${count} codes: stream differs`);
      assert.deepEqual(Array.from(unpackCodes(words, count, bits)), codes, `${count} codes`);
      const back = bytesToWords(bytes, count, bits);
      assert.deepEqual(back, words, `${count} codes: bytesToWords(wordsToBytes) differs`);
      assert.deepEqual(Array.from(unpackCodes(back, count, bits)), codes);
      // The padding bits after the last code are zero.
      const used = count * bits;
      for (let bit = used; bit < words.length * 32; bit++) {
        assert.equal((words[bit >> 5] >>> (bit & 31)) & 1, 0, `padding bit ${bit} is set`);
      }
    }
  });
}

Deno.test("pack: packCodes rejects a code that does not fit its width", () => {
  for (let bits = 1; bits <= 16; bits++) {
    assert.throws(() => packCodes([0, 2 ** bits, 1], bits), RangeError);
    assert.throws(() => packCodes([-1], bits), RangeError);
  }
  assert.throws(() => packCodes([1.5], 4), RangeError);
  assert.throws(() => packCodes([0], 17), RangeError);
  assert.throws(() => packCodes([0], 0), RangeError);
});

Deno.test("pack: codeBits is max(1, ceil(log2 n)) on [1, 65536]", () => {
  const want = (n: number) => {
    let b = 0;
    while (2 ** b < n) b++;
    return Math.max(1, b);
  };
  for (let n = 1; n <= 65536; n++) {
    if (codeBits(n) !== want(n)) assert.fail(`codeBits(${n}) = ${codeBits(n)}, want ${want(n)}`);
  }
  assert.throws(() => codeBits(0), RangeError);
  assert.throws(() => codeBits(65537), RangeError);
});

Deno.test("pack: firstCodeAtLeast finds the first code >= n, at any position", () => {
  for (let bits = 2; bits <= 16; bits++) {
    const n = 2 ** (bits - 1) + 1;
    const count = 101;
    const codes = Array.from({ length: count }, (_, i) => i % n);
    const words = packCodes(codes, bits);
    assert.equal(firstCodeAtLeast(words, count, bits, n), -1);
    for (const at of [0, 37, count - 1]) {
      const bad = codes.slice();
      bad[at] = n;
      assert.equal(firstCodeAtLeast(packCodes(bad, bits), count, bits, n), at, `${bits} bits`);
    }
  }
  // n = 2^bits: every code fits.
  assert.equal(firstCodeAtLeast(packCodes([255, 0], 8), 2, 8, 256), -1);
});

Deno.test("pack: codebookGpuBytes is packed words plus f32 centroids", () => {
  // 128 x 128 at d = 4: 4096 codes of 4 bits = 512 words; 16 x 4 f32 centroids.
  assert.equal(codebookGpuBytes(128, 128, 4, 16, 1), 512 * 4 + 16 * 4 * 4);
  // 3 codes of 1 bit fill one word: at least 16 bytes; 2 x 1 centroids are 8 bytes, held as 16.
  assert.equal(codebookGpuBytes(3, 1, 1, 2, 1), 16 + 16);
  // splits multiply the centroids; padding columns count as codes (ceil(100 / 3) = 34 per row).
  assert.equal(
    codebookGpuBytes(64, 100, 3, 300, 2),
    Math.ceil(64 * 34 * 9 / 32) * 4 + 2 * 300 * 3 * 4,
  );
});
