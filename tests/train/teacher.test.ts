// The teacher on the embedded kjv-llama: its top-k distribution per position is sorted, sums to
// at most 1, and its top-1 is the argmax of the logits the Runner (KV cache, matvec path)
// computes for the same prefix; a small storage binding limit (the Runner fallback for rows past
// the first logits chunk) gives the same answer; teacher text is deterministic for a seed.
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { UserError } from "../../src/errors.ts";
import { openModel } from "../../src/format/open.ts";
import { getGpu } from "../../src/gpu/device.ts";
import { Tokenizer } from "../../src/io/tokenizer.ts";
import { LlamaModel } from "../../src/model/model.ts";
import { Runner } from "../../src/model/runner.ts";
import { argmax } from "../../src/model/sample.ts";
import { loadTrainData, type TrainWindow } from "../../src/train/data.ts";
import { teacherText, teacherTopK, topKRows } from "../../src/train/teacher.ts";
import { assertClose, withMaxBinding } from "../util.ts";

const KJV = fileURLToPath(new URL("../../fixtures/kjv-llama", import.meta.url));
const tok = await Tokenizer.load(KJV);

async function heldoutWindows(seqlen: number, count: number): Promise<TrainWindow[]> {
  const d = await loadTrainData(`${KJV}/heldout.txt`, tok, { seqlen });
  return d.windows.slice(0, count);
}

function softmax(logits: Float32Array, temperature: number): Float64Array {
  let max = -Infinity;
  for (const x of logits) max = Math.max(max, x);
  const p = new Float64Array(logits.length);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += p[i] = Math.exp((logits[i] - max) / temperature);
  for (let i = 0; i < p.length; i++) p[i] /= sum;
  return p;
}

Deno.test("topKRows: sorted, ties to the lowest id, softmax at a temperature", () => {
  const logits = Float32Array.of(1, 3, 3, -2, 0.5, 3, 2, 1, /* row 2 */ 0, 0, 0, 0, 0, 0, 0, 9);
  const ids = new Int32Array(6), probs = new Float32Array(6);
  topKRows(logits, 2, 8, 3, 2, ids, probs);
  assert.deepEqual(Array.from(ids), [1, 2, 5, 7, 0, 1]);
  const p = softmax(logits.subarray(0, 8), 2);
  assertClose(probs.subarray(0, 3), [p[1], p[2], p[5]], 1e-7, 1e-6, "row 0");
  const q = softmax(logits.subarray(8), 2);
  assertClose(probs.subarray(3), [q[7], q[0], q[1]], 1e-7, 1e-6, "row 1");
});

Deno.test("teacherTopK: sorted, sum <= 1, top-1 = the Runner's argmax (kjv-llama)", async () => {
  const gpu = await getGpu();
  const seqlen = 48, k = 8;
  const windows = await heldoutWindows(seqlen, 3);
  const out = await teacherTopK(gpu, KJV, windows, k);
  const { cfg, source, index } = await openModel(KJV);
  const runner = await Runner.create(gpu, cfg, source, { maxContext: seqlen });
  try {
    assert.equal(out.length, 3);
    for (let i = 0; i < out.length; i++) {
      const t = out[i].teacher!;
      assert.equal(out[i].ids, windows[i].ids);
      assert.equal(t.k, k);
      assert.equal(t.ids.length, seqlen * k);
      assert.equal(t.probs.length, seqlen * k);
      for (let p = 0; p < seqlen; p++) {
        const row = t.probs.subarray(p * k, (p + 1) * k);
        const sum = row.reduce((a, b) => a + b, 0);
        assert.ok(sum <= 1 + 1e-5 && sum > 0, `window ${i} position ${p}: sum ${sum}`);
        for (let j = 1; j < k; j++) assert.ok(row[j] <= row[j - 1], `sorted at ${i}/${p}/${j}`);
        assert.equal(new Set(t.ids.subarray(p * k, (p + 1) * k)).size, k, "distinct ids");
      }
    }
    // The Runner's logits after each prefix of window 0, another path to the same numbers.
    const w = out[0], input = w.ids.subarray(0, seqlen);
    for (const p of [0, 1, 17, seqlen - 1]) {
      runner.reset();
      const logits = await runner.feed(input.subarray(0, p + 1));
      const probs = softmax(logits, 1);
      const top = w.teacher!.ids[p * k];
      const want = argmax(logits);
      const gap = probs[want] - probs[top];
      assert.ok(top === want || gap < 1e-4, `position ${p}: top-1 ${top}, argmax ${want}`);
      assertClose(
        w.teacher!.probs.subarray(p * k, (p + 1) * k),
        Array.from(w.teacher!.ids.subarray(p * k, (p + 1) * k), (id) => probs[id]),
        2e-4,
        1e-3,
        `position ${p} probabilities`,
      );
    }
    // Temperature flattens the distribution but keeps the order.
    const hot = await teacherTopK(gpu, KJV, windows.slice(0, 1), k, 2);
    assert.deepEqual(hot[0].teacher!.ids, out[0].teacher!.ids);
    assert.ok(hot[0].teacher!.probs[0] < out[0].teacher!.probs[0]);
  } finally {
    runner.release();
    index.close();
  }
});

Deno.test("teacherTopK: rows past the first logits chunk come from the Runner", async () => {
  const gpu = await getGpu();
  const seqlen = 80, k = 4;
  const windows = await heldoutWindows(seqlen, 1);
  const { cfg, source, index } = await openModel(KJV);
  const full = await LlamaModel.create(gpu, cfg, source);
  // 64 logit rows of 1024 floats per binding: positions 64..79 take the fallback
  const small = withMaxBinding(gpu, 64 * cfg.vocab * 4);
  const limited = await LlamaModel.create(small, cfg, source);
  try {
    const r = await limited.nll([windows[0].ids.subarray(0, seqlen)], { keepFirstLogits: true });
    assert.equal(r.firstLogits!.length, 64 * cfg.vocab, "the first chunk holds 64 rows");
    const a = await teacherTopK(gpu, full, windows, k);
    const b = await teacherTopK(small, limited, windows, k);
    const ta = a[0].teacher!, tb = b[0].teacher!;
    let same = 0;
    for (let p = 0; p < seqlen; p++) if (ta.ids[p * k] === tb.ids[p * k]) same++;
    assert.equal(same, seqlen, "top-1 ids agree at every position");
    assertClose(tb.probs, ta.probs, 2e-4, 1e-3, "probabilities");
  } finally {
    full.release();
    limited.release();
    index.close();
  }
});

Deno.test("teacherTopK: bad k and temperature are UserErrors", async () => {
  const gpu = await getGpu();
  const windows = await heldoutWindows(8, 1);
  await assert.rejects(teacherTopK(gpu, KJV, windows, 0), UserError);
  await assert.rejects(teacherTopK(gpu, KJV, windows, 1025), UserError);
  await assert.rejects(teacherTopK(gpu, KJV, windows, 4, 0), UserError);
});

Deno.test("teacherText: the same seed gives the same text, another seed another", async () => {
  const opts = { tokens: 40, temperature: 1, prompt: "And God said" };
  const a = await teacherText(KJV, { ...opts, seed: 1 });
  const b = await teacherText(KJV, { ...opts, seed: 1 });
  const c = await teacherText(KJV, { ...opts, seed: 2 });
  assert.equal(a, b);
  assert.notEqual(a, c);
  assert.ok(a.startsWith("And God said"), a);
  const n = tok.encode(a).length - tok.encode("And God said").length;
  assert.ok(n >= 30, `about 40 generated tokens, got ${n}: ${a}`);
  // greedy ignores the seed
  const g1 = await teacherText(KJV, { ...opts, temperature: 0, seed: 1 });
  const g2 = await teacherText(KJV, { ...opts, temperature: 0, seed: 2 });
  assert.equal(g1, g2);
});

Deno.test("teacherText: past the context the text continues (kjv-llama context 256)", async () => {
  let last = 0;
  const text = await teacherText(KJV, {
    tokens: 300,
    temperature: 0.8,
    seed: 3,
    onProgress: (done) => (last = done),
  });
  assert.equal(last, 300);
  assert.ok(tok.encode(text).length > 256, "more tokens than one context");
});
