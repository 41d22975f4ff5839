import assert from "node:assert/strict";
import { join } from "node:path";
import { UserError } from "../../src/errors.ts";
import { gptqWindows, readText } from "../../src/io/text.ts";
import { HAS_SHARED, WIKI } from "../shared.ts";

function isUser(...parts: string[]) {
  return (e: unknown) => {
    assert.ok(e instanceof UserError, `expected UserError, got ${e}`);
    for (const p of parts) assert.ok(e.message.includes(p), `"${e.message}" lacks "${p}"`);
    return true;
  };
}

Deno.test("readText normalizes CRLF to LF and keeps the rest", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "a.txt");
    Deno.writeTextFileSync(path, " one\r\ntwo\r\n\r\nthree\n");
    assert.equal(await readText(path), " one\ntwo\n\nthree\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readText refuses a missing or blank file naming it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const missing = join(dir, "missing.txt");
    await assert.rejects(() => readText(missing), isUser(missing));
    const blank = join(dir, "blank.txt");
    Deno.writeTextFileSync(blank, " \r\n\t\n");
    await assert.rejects(() => readText(blank), isUser(blank, "empty"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("gptqWindows cuts floor(n / seqlen) non-overlapping windows", () => {
  const ids = Array.from({ length: 10 }, (_, i) => i);
  const w = gptqWindows(ids, 3);
  assert.deepEqual(w.map((x) => Array.from(x)), [[0, 1, 2], [3, 4, 5], [6, 7, 8]]);
  assert.ok(w.every((x) => x instanceof Int32Array));
  assert.deepEqual(gptqWindows(Int32Array.from(ids), 5).map((x) => Array.from(x)), [
    [0, 1, 2, 3, 4],
    [5, 6, 7, 8, 9],
  ]);
  assert.equal(gptqWindows(ids, 10).length, 1);
});

Deno.test("gptqWindows keeps only the first maxWindows windows", () => {
  const ids = Int32Array.from({ length: 20 }, (_, i) => i);
  const w = gptqWindows(ids, 4, 2);
  assert.deepEqual(w.map((x) => Array.from(x)), [[0, 1, 2, 3], [4, 5, 6, 7]]);
  assert.equal(gptqWindows(ids, 4, 99).length, 5);
  // Windows are copies, not views of the input.
  w[0][0] = 42;
  assert.equal(ids[0], 0);
});

Deno.test("gptqWindows refuses fewer tokens than one window", () => {
  assert.throws(() => gptqWindows([1, 2, 3], 4), isUser("3 tokens", "seqlen 4"));
  assert.throws(() => gptqWindows([1, 2, 3], 0), isUser("0"));
  assert.throws(() => gptqWindows([1, 2, 3], 1, -1), isUser("-1"));
});

Deno.test({
  name: "readText reads the wikitext-2 test split",
  ignore: !HAS_SHARED,
  fn: async () => {
    const text = await readText(WIKI);
    assert.ok(text.length > 1_000_000);
    assert.ok(!text.includes("\r\n"));
  },
});
