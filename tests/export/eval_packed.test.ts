// Evaluation of a packed compressed folder (codebook kernels) equals evaluation of its f32
// dequantized export (dense matmuls): same perplexity up to summation order.
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { evaluatePerplexity } from "../../src/eval/perplexity.ts";
import { compressedFolder } from "../model/compressed_folder.ts";
import { runTask } from "../pipeline/run.ts";

const KJV = fileURLToPath(new URL("../../fixtures/kjv-llama", import.meta.url));

Deno.test("eval on a packed folder equals eval on its f32 dequantized export", async () => {
  const packed = await compressedFolder(KJV);
  const dense = `${await Deno.makeTempDir({ prefix: "cluscomp-deq-" })}/dense`;
  const r = await runTask("export", ["--dequantize", packed, dense, "--dtype", "f32"]);
  assert.equal(r.code, 0, r.stderr);
  const text = `${KJV}/heldout.txt`;
  const a = await evaluatePerplexity({ model: packed, text, seqlen: 128, maxWindows: 8 });
  const b = await evaluatePerplexity({ model: dense, text, seqlen: 128, maxWindows: 8 });
  assert.equal(a.tokens, b.tokens);
  console.log(
    `packed ppl ${a.ppl} (GPU peak ${a.gpu_peak_bytes}), dense ${b.ppl} (${b.gpu_peak_bytes})`,
  );
  assert.ok(Math.abs(a.ppl - b.ppl) <= 1e-5 * b.ppl, `packed ${a.ppl} vs dense ${b.ppl}`);
  assert.ok(a.gpu_peak_bytes < b.gpu_peak_bytes, "the packed folder evaluates in less GPU memory");
});
