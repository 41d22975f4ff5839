// Training data: each format's windows against the tokenizer's own encode, Alpaca masks that
// cover exactly the response (+ EOS), auto-detection, the held-out split, and one UserError
// naming file:line and field for each kind of bad input.
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { UserError } from "../../src/errors.ts";
import { Tokenizer } from "../../src/io/tokenizer.ts";
import {
  ALPACA_PROMPT_INPUT,
  ALPACA_PROMPT_NO_INPUT,
  alpacaPrompt,
  loadTrainData,
  splitHeldOut,
  type TrainWindow,
} from "../../src/train/data.ts";

const KJV = fileURLToPath(new URL("../../fixtures/kjv-llama", import.meta.url));
const ALPACA = fileURLToPath(new URL("../../fixtures/alpaca-kjv.jsonl", import.meta.url));
const tok = await Tokenizer.load(KJV);
const BOS = tok.bosId!, EOS = tok.eosId!;
const CALIB = (await Deno.readTextFile(`${KJV}/calib.txt`)).slice(0, 3000);

async function withFile<T>(
  name: string,
  content: string,
  fn: (path: string) => Promise<T>,
): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-data-" });
  try {
    const path = `${dir}/${name}`;
    await Deno.writeTextFile(path, content);
    return await fn(path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function jsonl(records: unknown[]): string {
  return records.map((r) => JSON.stringify(r)).join("\n") + "\n";
}

function concat(parts: ArrayLike<number>[]): Int32Array {
  const out: number[] = [];
  for (const p of parts) out.push(...Array.from(p));
  return Int32Array.from(out);
}

Deno.test("the kjv tokenizer has BOS and EOS (the tests below rely on them)", () => {
  assert.equal(tok.bosId, 1022);
  assert.equal(tok.eosId, 1023);
});

Deno.test("text: the whole file tokenized once, windows of seqlen + 1 with stride seqlen", async () => {
  const seqlen = 16;
  await withFile("calib.txt", CALIB, async (path) => {
    const d = await loadTrainData(path, tok, { seqlen });
    const ids = tok.encode(CALIB);
    const count = Math.floor((ids.length - 1) / seqlen);
    assert.equal(d.format, "text");
    assert.equal(d.tokens, ids.length);
    assert.equal(d.windows.length, count);
    assert.equal(d.counted, count * seqlen);
    assert.equal(d.dropped, ids.length - (count * seqlen + 1));
    d.windows.forEach((w, i) => {
      assert.deepEqual(w.ids, ids.slice(i * seqlen, i * seqlen + seqlen + 1), `window ${i}`);
      assert.equal(w.mask, undefined);
    });
    // every id after the first is a target exactly once
    const targets = concat(d.windows.map((w) => w.ids.subarray(1)));
    assert.deepEqual(targets, ids.slice(1, count * seqlen + 1));
    // a seed shuffles the order, the same seed the same way
    const a = await loadTrainData(path, tok, { seqlen, seed: 3 });
    const b = await loadTrainData(path, tok, { seqlen, seed: 3 });
    assert.deepEqual(a.windows, b.windows);
    assert.notDeepEqual(a.windows, d.windows);
    const key = (w: TrainWindow) => w.ids.join(",");
    assert.deepEqual(a.windows.map(key).sort(), d.windows.map(key).sort());
  });
});

Deno.test("jsonl: [BOS] text [EOS] per record, packed, BOS targets masked off", async () => {
  const texts = [
    "In the beginning God created the heaven and the earth.",
    "And God said, Let there be light: and there was light.",
    "Jesus wept.",
    "And the evening and the morning were the first day.",
  ];
  const seqlen = 8;
  await withFile("data.jsonl", jsonl(texts.map((text) => ({ text, id: 1 }))), async (path) => {
    const d = await loadTrainData(path, tok, { seqlen });
    assert.equal(d.format, "jsonl");
    assert.equal(d.records, 4);
    const all = concat(texts.map((t) => [BOS, ...tok.encode(t), EOS]));
    assert.equal(d.tokens, all.length);
    const count = Math.floor((all.length - 1) / seqlen);
    assert.equal(d.windows.length, count);
    let counted = 0, masked = 0;
    d.windows.forEach((w, i) => {
      assert.deepEqual(w.ids, all.slice(i * seqlen, i * seqlen + seqlen + 1));
      for (let t = 0; t < seqlen; t++) {
        const m = w.mask ? w.mask[t] : 1;
        assert.equal(m, w.ids[t + 1] === BOS ? 0 : 1, `window ${i} target ${t}`);
        counted += m;
        masked += 1 - m;
      }
    });
    assert.equal(d.counted, counted);
    assert.ok(masked >= 2, "the BOS of records 2.. fall inside windows");
  });
});

Deno.test("alpaca: the Stanford template, with and without input", () => {
  assert.equal(
    alpacaPrompt("Name the sons of Noah.", ""),
    "Below is an instruction that describes a task. Write a response that appropriately " +
      "completes the request.\n\n### Instruction:\nName the sons of Noah.\n\n### Response:\n",
  );
  assert.equal(
    alpacaPrompt("Continue the verse.", "Jesus wept."),
    "Below is an instruction that describes a task, paired with an input that provides further " +
      "context. Write a response that appropriately completes the request.\n\n" +
      "### Instruction:\nContinue the verse.\n\n### Input:\nJesus wept.\n\n### Response:\n",
  );
  // replacement patterns in a field stay literal
  assert.ok(alpacaPrompt("x $& y", "$'").includes("x $& y\n\n### Input:\n$'\n\n"));
  assert.ok(ALPACA_PROMPT_NO_INPUT.includes("{instruction}"));
  assert.ok(ALPACA_PROMPT_INPUT.includes("{input}"));
});

/** The masked targets of a window, decoded; and the ids before the first masked target. */
function maskedParts(w: TrainWindow): { response: string; before: Int32Array; ids: number[] } {
  const ids: number[] = [];
  let first = -1;
  for (let t = 0; t < w.mask!.length; t++) {
    if (w.mask![t]) {
      if (first < 0) first = t;
      ids.push(w.ids[t + 1]);
    }
  }
  return { response: tok.decode(ids), before: w.ids.slice(0, first + 1), ids };
}

Deno.test("alpaca: one example per window; the mask covers exactly the output + EOS", async () => {
  const seqlen = 200; // the longest fixture example is 198 tokens
  const lines = (await Deno.readTextFile(ALPACA)).trim().split("\n").map((l) => JSON.parse(l));
  const d = await loadTrainData(ALPACA, tok, { seqlen });
  assert.equal(d.format, "alpaca");
  assert.equal(d.windows.length, lines.length);
  assert.equal(d.truncated, 0);
  let counted = 0;
  d.windows.forEach((w, i) => {
    const r = lines[i];
    assert.equal(w.ids.length, seqlen + 1);
    assert.equal(w.mask!.length, seqlen);
    const { response, before, ids } = maskedParts(w);
    assert.equal(response, r.output + "<|end_of_text|>", `record ${i + 1}`);
    assert.equal(ids[ids.length - 1], EOS);
    // the masked targets are contiguous, right after [BOS] + prompt
    const prompt = tok.encode(alpacaPrompt(r.instruction, r.input));
    assert.deepEqual(before, concat([[BOS], prompt]), `record ${i + 1} prompt`);
    assert.deepEqual(
      w.ids.slice(before.length, before.length + ids.length),
      Int32Array.from(ids),
    );
    // the rest is padding, not counted
    for (let j = before.length + ids.length; j <= seqlen; j++) assert.equal(w.ids[j], EOS);
    counted += ids.length;
  });
  assert.equal(d.counted, counted);
  // both template variants occur in the fixture
  assert.ok(lines.some((r) => r.input === "") && lines.some((r) => r.input !== ""));
});

Deno.test("alpaca: a long example keeps the prompt's end and the response's start", async () => {
  const seqlen = 40;
  const d = await loadTrainData(ALPACA, tok, { seqlen });
  const lines = (await Deno.readTextFile(ALPACA)).trim().split("\n").map((l) => JSON.parse(l));
  assert.ok(d.truncated > 0);
  let sawCutResponse = false;
  d.windows.forEach((w, i) => {
    const r = lines[i];
    const prompt = tok.encode(alpacaPrompt(r.instruction, r.input));
    const resp = concat([tok.encode(r.output), [EOS]]);
    const { before, ids } = maskedParts(w);
    assert.equal(w.ids[0], BOS);
    const keptP = before.subarray(1);
    // the prompt keeps its last tokens, the response its first
    assert.deepEqual(keptP, prompt.slice(prompt.length - keptP.length), `record ${i + 1}`);
    assert.deepEqual(Int32Array.from(ids), resp.slice(0, ids.length), `record ${i + 1}`);
    assert.ok(ids.length >= Math.min(resp.length, Math.floor(seqlen / 2)));
    if (keptP.length + ids.length < prompt.length + resp.length) {
      assert.equal(1 + keptP.length + ids.length, seqlen + 1, "a cut example fills the window");
    }
    if (ids.length < resp.length) sawCutResponse = true;
  });
  assert.ok(sawCutResponse, "some response is longer than half of 40 tokens");
});

Deno.test("auto-detection: extension, then the first record's keys", async () => {
  const alpacaRecs = [{ instruction: "Who wept?", input: "", output: "Jesus wept." }];
  const textRecs = [{ text: CALIB.slice(0, 500) }];
  const cases: [string, string, string][] = [
    ["a.jsonl", jsonl(alpacaRecs), "alpaca"],
    ["a.json", JSON.stringify(alpacaRecs, null, 2), "alpaca"], // a JSON array (alpaca_data.json)
    ["a.JSONL", jsonl(textRecs), "jsonl"],
    ["a.json", jsonl(textRecs), "jsonl"],
    ["a.txt", jsonl(textRecs), "text"], // JSON in a .txt file is text
    ["a", CALIB, "text"],
  ];
  for (const [name, content, want] of cases) {
    await withFile(name, content, async (path) => {
      const d = await loadTrainData(path, tok, { seqlen: 8 });
      assert.equal(d.format, want, name);
    });
  }
  // an explicit format wins
  await withFile("a.jsonl", jsonl(textRecs), async (path) => {
    const d = await loadTrainData(path, tok, { seqlen: 8, format: "text" });
    assert.equal(d.format, "text");
    assert.deepEqual(d.windows[0].ids, tok.encode(jsonl(textRecs)).slice(0, 9));
  });
  // the JSON array gives the same windows as the JSON Lines file
  const recs = (await Deno.readTextFile(ALPACA)).trim().split("\n").map((l) => JSON.parse(l));
  const fromLines = await loadTrainData(ALPACA, tok, { seqlen: 64 });
  await withFile("alpaca.json", JSON.stringify(recs), async (path) => {
    const fromArray = await loadTrainData(path, tok, { seqlen: 64 });
    assert.deepEqual(fromArray.windows, fromLines.windows);
  });
});

Deno.test("splitHeldOut: seeded, disjoint, order kept; a fraction or a count", () => {
  const windows = Array.from({ length: 20 }, (_, i) => ({ ids: Int32Array.of(i, i + 1) }));
  const a = splitHeldOut(windows, 0.1, 5);
  assert.equal(a.eval.length, 2);
  assert.equal(a.train.length, 18);
  const idx = (ws: TrainWindow[]) => ws.map((w) => w.ids[0]);
  assert.deepEqual([...idx(a.train), ...idx(a.eval)].sort((x, y) => x - y), idx(windows));
  assert.deepEqual(idx(a.train), [...idx(a.train)].sort((x, y) => x - y));
  assert.deepEqual(splitHeldOut(windows, 0.1, 5), a);
  const others = [1, 2, 3, 4, 6, 7].map((s) => idx(splitHeldOut(windows, 0.1, s).eval).join());
  assert.ok(others.some((o) => o !== idx(a.eval).join()), "the seed picks the held-out windows");
  assert.equal(splitHeldOut(windows, 3, 1).eval.length, 3);
  assert.equal(splitHeldOut(windows, 0.01, 1).eval.length, 1);
  assert.equal(splitHeldOut(windows, 0, 1).eval.length, 0);
  assert.throws(() => splitHeldOut(windows, 20, 1), UserError);
  assert.throws(() => splitHeldOut(windows, 2.5, 1), UserError);
  assert.throws(() => splitHeldOut(windows, -1, 1), UserError);
});

Deno.test("bad input: one UserError naming the file, the line and the field", async () => {
  const ok = { instruction: "Who wept?", input: "", output: "Jesus wept." };
  const cases: {
    name: string;
    content: string;
    seqlen?: number;
    format?: "jsonl";
    want: RegExp;
  }[] = [
    {
      name: "a.jsonl",
      content: jsonl([ok, ok]) + "{not json\n",
      want: /a\.jsonl:3: malformed JSON line/,
    },
    {
      name: "a.jsonl",
      content: jsonl([ok, { instruction: "Who?", input: "" }]),
      want: /a\.jsonl:2: missing field "output"/,
    },
    {
      name: "a.jsonl",
      content: jsonl([ok]) + "\n\n" + jsonl([{ ...ok, instruction: 7 }]),
      want: /a\.jsonl:4: field "instruction" must be a string, got a number/,
    },
    {
      name: "a.jsonl",
      content: jsonl([ok, { ...ok, input: ["x"] }]),
      want: /a\.jsonl:2: field "input" must be a string, got an array/,
    },
    {
      name: "a.jsonl",
      content: jsonl([ok, { ...ok, output: "  " }]),
      want: /a\.jsonl:2: field "output" is empty/,
    },
    {
      name: "t.jsonl",
      content: jsonl([{ text: CALIB }, { text: null }]),
      want: /t\.jsonl:2: field "text" must be a string, got null/,
    },
    {
      name: "t.jsonl",
      content: jsonl([{ text: CALIB }, { body: "x" }]),
      want: /t\.jsonl:2: missing field "text"/,
    },
    {
      name: "t.jsonl",
      content: jsonl([ok]),
      format: "jsonl",
      want: /t\.jsonl:1: missing field "text"/,
    },
    {
      name: "t.jsonl",
      content: jsonl([{ text: CALIB }]) + "[1, 2]\n",
      want: /t\.jsonl:2: expected a JSON object, got an array/,
    },
    {
      name: "t.jsonl",
      content: jsonl([{ body: "x" }]),
      want: /t\.jsonl:1: cannot tell the format: a record needs a "text" field/,
    },
    { name: "e.txt", content: "", want: /e\.txt: file is empty/ },
    { name: "e.jsonl", content: "\n  \n", want: /e\.jsonl: file is empty/ },
    {
      name: "short.txt",
      content: "Jesus wept.",
      seqlen: 64,
      want: /short\.txt: the text gives \d+ tokens, fewer than one training window needs/,
    },
    {
      name: "short.jsonl",
      content: jsonl([{ text: "Jesus wept." }]),
      seqlen: 64,
      want: /short\.jsonl: 1 record gives \d+ tokens, fewer than one training window/,
    },
    { name: "b.json", content: "[{]", want: /b\.json: malformed JSON array/ },
    {
      name: "b.json",
      content: JSON.stringify([ok, 3]),
      want: /b\.json: record 2: expected a JSON object, got a number/,
    },
  ];
  for (const c of cases) {
    await withFile(c.name, c.content, async (path) => {
      const err = await loadTrainData(path, tok, { seqlen: c.seqlen ?? 8, format: c.format })
        .then(() => null, (e) => e);
      assert.ok(err instanceof UserError, `${c.name}: expected a UserError, got ${err}`);
      assert.match(err.message, c.want);
      assert.ok(err.message.includes(path), `${err.message} names ${path}`);
      assert.ok(!err.message.includes("\n"), "one line");
    });
  }
  await assert.rejects(
    loadTrainData("/nonexistent/x.jsonl", tok, { seqlen: 8 }),
    (e) => e instanceof UserError && e.message.includes("/nonexistent/x.jsonl"),
  );
  await assert.rejects(loadTrainData(ALPACA, tok, { seqlen: 0 }), UserError);
});
