// Bad settings to `compress` (the embedded fixtures/kjv-llama, no ../shared): exit 1 with one
// error line naming the flag, no stack trace, before any work. And the original model's bits per
// weight in the report are its stored width (BF16 16, F32 32), not a constant.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { bytesToF32, SafetensorsIndex, writeSafetensors } from "../../src/io/safetensors.ts";
import type { CompressResult } from "../../src/pipeline/compress.ts";
import { originalBitsPerWeight, reportMarkdown } from "../../src/pipeline/report.ts";
import { loadConfig } from "../../src/io/config.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const KJV = `${ROOT}fixtures/kjv-llama`;

async function runCompress(args: string[]): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}tasks/compress.ts`, "--quiet", ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

const bad: { flags: string[]; want: RegExp }[] = [
  // k-means handles d up to 16: a larger d is a bad setting (exit 1), not an internal error.
  { flags: ["--d", "20", "--n", "16"], want: /--d must be an integer from 1 to 16 \(got 20\)/ },
  { flags: ["--bits", "3", "--d", "17"], want: /--d must be an integer from 1 to 16 \(got 17\)/ },
  {
    flags: ["--bits", "3", "--override", "q:d=20"],
    want: /--override q:d must be an integer from 1 to 16 \(got 20\)/,
  },
  { flags: ["--bits", "3", "--d", "0"], want: /--d must be an integer >= 1/ },
];

Deno.test("compress: a d beyond k-means' 1..16 exits 1 with one line naming the flag", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-compress-bad-" });
  try {
    // Run in parallel: each exits during planning, before any GPU work.
    const results = await Promise.all(
      bad.map(({ flags }, i) =>
        runCompress(["--model", KJV, "--out", `${dir}/out${i}`, "--no-finetune", ...flags])
      ),
    );
    results.forEach((r, i) => {
      const { flags, want } = bad[i];
      assert.equal(r.code, 1, `${flags.join(" ")}: exit ${r.code}\n${r.stderr}`);
      const lines = r.stderr.trim().split("\n").filter((l) => l.trim() && !l.includes("MESA"));
      assert.equal(lines.length, 1, `${flags.join(" ")}: one line expected, got\n${r.stderr}`);
      assert.match(lines[0], /^error: /);
      assert.match(lines[0], want);
      assert.doesNotMatch(r.stderr, /internal error|\n\s+at /);
    });
    bad.forEach((_, i) => assert.ok(!existsSync(`${dir}/out${i}`), "no output folder"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** originalBitsPerWeight of a model folder. */
async function bitsOf(dir: string): Promise<number> {
  const idx = await SafetensorsIndex.open(dir);
  try {
    return originalBitsPerWeight(await loadConfig(dir), idx);
  } finally {
    idx.close();
  }
}

Deno.test("report: the original's bits per weight are its stored width (BF16 16, F32 32)", async () => {
  assert.equal(await bitsOf(KJV), 16);
  // An F32 copy of the same model.
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-f32-" });
  try {
    for (const f of ["config.json", "tokenizer.json", "tokenizer_config.json"]) {
      await Deno.copyFile(`${KJV}/${f}`, `${dir}/${f}`);
    }
    const idx = await SafetensorsIndex.open(KJV);
    const tensors = [];
    for (const name of idx.names()) {
      const t = idx.info(name);
      const v = bytesToF32(await idx.readRaw(name), t.dtype);
      tensors.push({ name, dtype: "F32" as const, shape: t.shape, data: new Uint8Array(v.buffer) });
    }
    idx.close();
    await writeSafetensors(`${dir}/model.safetensors`, tensors);
    assert.equal(await bitsOf(dir), 32);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const ev = { text: "t.txt", seqlen: 128, windows: 4, ppl: 10, nll: 0, tokens: 0 };
  const r = {
    method: "cluscomp",
    model: KJV,
    out: "o",
    bits_per_weight: 2,
    stored_bits_per_weight: 2,
    blocks: [],
    eval: { original: ev, compressed: { ...ev, ppl: 12 } },
    seconds: { cluster: 0, finetune: 0, export: 0, eval: 0 },
    gpu_peak_bytes: 0,
    gpu_peak: {},
  } as unknown as CompressResult;
  assert.match(reportMarkdown(r, 32), /\n\| original \| 32 \| 10\.0000 \|/);
  assert.match(reportMarkdown(r, 16), /\n\| original \| 16 \| 10\.0000 \|/);
});
