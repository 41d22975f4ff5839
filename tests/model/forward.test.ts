// The whole model against the independent FP32 references in ../shared.
import { assertClose } from "../util.ts";
import { HAS_SHARED, readReference, STORIES, TINYLLAMA, WIKI } from "../shared.ts";
import { evaluatePerplexity } from "../../src/eval/perplexity.ts";
import { openModel } from "../../src/format/open.ts";
import { getGpu } from "../../src/gpu/device.ts";
import { LlamaModel } from "../../src/model/model.ts";
import { Tokenizer } from "../../src/io/tokenizer.ts";
import { gptqWindows, readText } from "../../src/io/text.ts";
import assert from "node:assert/strict";

interface Ref {
  perplexity: {
    wikitext2_test_raw: {
      first_64_windows_seqlen_128: {
        windows: number;
        predicted_tokens: number;
        mean_nll: number;
        ppl: number;
      };
    };
  };
  wiki128_window0: {
    input_ids: number[];
    logits_file: string;
    logits_shape: [number, number];
    hidden_norms: Record<string, number[]>;
  };
}

for (const dir of [STORIES, TINYLLAMA]) {
  const name = dir.split("/").pop()!;

  Deno.test({
    name: `${name}: wiki perplexity over the first 64 windows of 128 matches the reference`,
    ignore: !HAS_SHARED,
    fn: async () => {
      const ref = readReference(dir) as unknown as Ref;
      const want = ref.perplexity.wikitext2_test_raw.first_64_windows_seqlen_128;
      const r = await evaluatePerplexity({
        model: dir,
        text: WIKI,
        seqlen: 128,
        maxWindows: want.windows,
        keepFirstLogits: true,
      });
      console.log(
        `${name}: ppl ${r.ppl} (reference ${want.ppl}), ${r.tokens_per_s.toFixed(0)} tok/s`,
      );
      assert.equal(r.tokens, want.predicted_tokens);
      assertClose([r.ppl], [want.ppl], 0, 1e-4, "ppl");
      assertClose([r.nll], [want.mean_nll], 0, 1e-4, "mean nll");
      const w0 = ref.wiki128_window0;
      const logits = new Float32Array(
        Deno.readFileSync(`${dir}/references/${w0.logits_file}`).buffer,
      );
      assertClose(r.firstLogits!, logits, 1e-4, 0, "window 0 logits");
    },
  });

  Deno.test({
    name: `${name}: per-layer hidden-state norms of window 0 match the reference`,
    ignore: !HAS_SHARED,
    fn: async () => {
      const ref = readReference(dir) as unknown as Ref;
      const w0 = ref.wiki128_window0;
      const { cfg, index, source } = await openModel(dir);
      const tok = await Tokenizer.load(dir);
      const ids = tok.encode(await readText(WIKI));
      const [win] = gptqWindows(ids, 128, 1);
      assert.deepEqual([...win], w0.input_ids);
      const gpu = await getGpu();
      const model = await LlamaModel.create(gpu, cfg, source);
      try {
        await model.nll([win], {
          onHidden: async (layer, x) => {
            const key = layer < 0
              ? "embed"
              : layer === cfg.layers
              ? "final_norm"
              : `layer_${layer}`;
            const v = await x.toF32();
            const T = 128, n = v.length / cfg.hidden;
            const norms = new Float64Array(T);
            for (let h = 0; h < cfg.hidden; h++) {
              for (let t = 0; t < T; t++) norms[t] += v[h * n + t] ** 2;
            }
            assertClose(norms.map(Math.sqrt), w0.hidden_norms[key], 1e-5, 1e-5, `${name} ${key}`);
          },
        });
      } finally {
        model.release();
        index.close();
      }
    },
  });
}
