// Running a model: KV-cache decoding against a full recomputation, a compressed folder run by
// the codebook kernels against the same folder decoded to dense f32, and the GPU memory the
// weights of a compressed folder take.
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { codeBits, packedWords } from "../../src/io/pack.ts";
import type { ClusterModule } from "../../src/format/compressed.ts";
import { getGpu } from "../../src/gpu/device.ts";
import { linearNames } from "../../src/io/config.ts";
import { Tokenizer } from "../../src/io/tokenizer.ts";
import { LlamaModel } from "../../src/model/model.ts";
import { openModel } from "../../src/format/open.ts";
import { generate, Runner } from "../../src/model/runner.ts";
import { argmax } from "../../src/model/sample.ts";
import { decodedView, type WeightSource } from "../../src/model/weights.ts";
import { HAS_SHARED, STORIES, TINYLLAMA, WIKI } from "../shared.ts";
import { assertClose } from "../util.ts";
import { compressedFolder } from "./compressed_folder.ts";

const KJV = fileURLToPath(new URL("../../fixtures/kjv-llama", import.meta.url));
const KJV_TEXT = `${KJV}/heldout.txt`;

const MODELS = [
  { name: "kjv-llama", dir: KJV, text: KJV_TEXT, shared: false },
  { name: "stories260K", dir: STORIES, text: WIKI, shared: true },
  { name: "tinyllama-6.8m", dir: TINYLLAMA, text: WIKI, shared: true },
];

async function promptOf(dir: string, text: string, tokens: number): Promise<Int32Array> {
  const tok = await Tokenizer.load(dir);
  const body = (await Deno.readTextFile(text)).slice(0, 4000);
  return tok.encode(body).subarray(0, tokens);
}

/** Logits [T, vocab] of one window through LlamaModel (the batched evaluation path). */
async function windowLogits(
  cfg: Awaited<ReturnType<typeof openModel>>["cfg"],
  src: WeightSource,
  ids: Int32Array,
): Promise<Float32Array> {
  const gpu = await getGpu();
  const model = await LlamaModel.create(gpu, cfg, src);
  try {
    const r = await model.nll([ids], { keepFirstLogits: true });
    return r.firstLogits!;
  } finally {
    model.release();
  }
}

async function kvCacheMatchesRecomputation(dir: string, text: string, steps: number) {
  const { cfg, source, index } = await openModel(dir);
  const gpu = await getGpu();
  const prompt = await promptOf(dir, text, 9);
  const P = prompt.length, V = cfg.vocab;
  const before = gpu.bytesLive;
  const runner = await Runner.create(gpu, cfg, source, { prefillChunk: 4 });
  // The memory plan's generate row sizes what create() allocates besides the weights.
  const planned = Runner.scratchBytes(cfg, gpu.limits.maxBinding, cfg.maxPositions, 4);
  assert.equal(
    gpu.bytesLive - before - runner.weightBytes,
    planned.kvCache + planned.scratch,
    "KV cache and scratch bytes as planned",
  );
  const seq = [...prompt];
  const stepLogits: Float32Array[] = [];
  try {
    // A 9-token prompt in chunks of 4 exercises chunked prefill against the cache too.
    let logits = await runner.feed(prompt);
    stepLogits.push(logits);
    for (let i = 0; i < steps; i++) {
      const id = argmax(logits);
      seq.push(id);
      logits = await runner.feed([id]);
      stepLogits.push(logits);
    }
    assert.equal(runner.position, P + steps);
  } finally {
    runner.release();
  }
  const full = await windowLogits(cfg, source, Int32Array.from(seq));
  index.close();
  for (let j = 0; j < stepLogits.length; j++) {
    const pos = P - 1 + j;
    assertClose(stepLogits[j], full.subarray(pos * V, (pos + 1) * V), 1e-4, 0, `position ${pos}`);
  }
}

Deno.test("KV-cache decoding equals a full recomputation at 100 positions (kjv-llama)", async () => {
  await kvCacheMatchesRecomputation(KJV, KJV_TEXT, 100);
});

Deno.test({
  name: "KV-cache decoding equals a full recomputation at 100 positions (stories260K)",
  ignore: !HAS_SHARED,
  fn: () => kvCacheMatchesRecomputation(STORIES, WIKI, 100),
});

Deno.test("feed refuses tokens past the context and ids outside the vocabulary", async () => {
  const { cfg, source, index } = await openModel(KJV);
  const gpu = await getGpu();
  const runner = await Runner.create(gpu, cfg, source, { maxContext: 8 });
  try {
    await assert.rejects(() => runner.feed([1, 2, 3, 4, 5, 6, 7, 8, 9]), /exceed the context of 8/);
    await assert.rejects(() => runner.feed([cfg.vocab]), /outside the vocabulary/);
    await runner.feed([1, 2, 3, 4, 5, 6, 7, 8]);
    await assert.rejects(() => runner.feed([1]), /exceed the context/);
  } finally {
    runner.release();
    index.close();
  }
});

for (const m of MODELS) {
  Deno.test({
    name: `compressed ${m.name}: codebook kernels match the decoded dense weights ` +
      `(logits within 1e-4, 64 greedy tokens identical, weights <= 1.1x packed size on the GPU)`,
    ignore: m.shared && !HAS_SHARED,
    fn: async () => {
      const folder = await compressedFolder(m.dir);
      const { cfg, source, index, quant } = await openModel(folder);
      const gpu = await getGpu();
      try {
        assert.ok(quant, "the folder is compressed");
        assert.ok(await source.codebook?.(0, "q"), "the source hands out codebooks");
        const dense = decodedView(source);
        const ids = await promptOf(m.dir, m.text, 64);
        assert.equal(ids.length, 64);
        const got = await windowLogits(cfg, source, ids);
        const want = await windowLogits(cfg, dense, ids);
        assertClose(got, want, 1e-4, 0, `${m.name} first-window logits`);

        const opts = { maxNewTokens: 64, temperature: 0, topK: 0, topP: 1, seed: 0, eosId: null };
        const prompt = ids.subarray(0, 8);
        const cb = await Runner.create(gpu, cfg, source);
        const a = await generate(cb, prompt, opts);
        const weightBytes = cb.weightBytes;
        cb.release();
        const de = await Runner.create(gpu, cfg, dense);
        const b = await generate(de, prompt, opts);
        const denseBytes = de.weightBytes;
        de.release();
        assert.equal(a.ids.length, 64);
        assert.deepEqual(a.ids, b.ids, "greedy tokens from codebook kernels and dense weights");

        // What the folder holds: packed codes + codebooks (f32 on the GPU) + dense tensors (f32).
        let expected = cfg.vocab * cfg.hidden * (cfg.tieEmbeddings ? 1 : 2) + cfg.hidden;
        for (let l = 0; l < cfg.layers; l++) {
          expected += 2 * cfg.hidden;
          for (const lin of linearNames(l, cfg)) {
            const mod = quant.modules[lin.name.replace(/\.weight$/, "")] as ClusterModule;
            if (!mod) {
              expected += lin.in * lin.out;
              continue;
            }
            const codes = lin.in * Math.ceil(lin.out / mod.d);
            expected += packedWords(codes, codeBits(mod.n)) + mod.splits * mod.n * mod.d;
          }
        }
        expected *= 4;
        console.log(
          `${m.name}: weights on the GPU ${weightBytes} bytes, packed folder ${expected}, ` +
            `ratio ${(weightBytes / expected).toFixed(3)}; dense ${denseBytes}`,
        );
        assert.ok(
          weightBytes <= 1.1 * expected,
          `weights take ${weightBytes} bytes, more than 1.1 x ${expected}`,
        );
        assert.ok(weightBytes < denseBytes, "the compressed weights are smaller than dense");
      } finally {
        index.close();
      }
    },
  });
}
