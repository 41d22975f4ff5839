// The library API of mod.ts: load a folder, generate and score text in a few lines.
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { LoadedModel } from "../../mod.ts";

const KJV = fileURLToPath(new URL("../../fixtures/kjv-llama", import.meta.url));

Deno.test("LoadedModel generates streamed text equal to the decoded ids, and scores a text", async () => {
  const m = await LoadedModel.load(KJV);
  try {
    assert.equal(m.compressed, false);
    let streamed = "";
    const r = await m.generate("In the beginning God", {
      maxNewTokens: 12,
      onText: (t) => streamed += t,
    });
    assert.ok(r.ids.length >= 1 && r.ids.length <= 12);
    assert.equal(streamed, r.text);
    const prompt = m.tokenizer.encode("In the beginning God", { addBos: true });
    const full = m.tokenizer.decode([...prompt, ...r.ids]);
    assert.equal(m.tokenizer.decode(prompt) + r.text, full);
    // Greedy is repeatable.
    const again = await m.generate("In the beginning God", { maxNewTokens: 12 });
    assert.deepEqual(again.ids, r.ids);
    const ppl = await m.perplexity(`${KJV}/heldout.txt`, { seqlen: 64, maxWindows: 4 });
    assert.ok(ppl.ppl > 1 && ppl.ppl < 1000, `ppl ${ppl.ppl}`);
  } finally {
    m.release();
  }
});
