// `deno task bench [--quick] [--only NAME]`: one JSON line per benchmark on stdout.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { benchFolder, benchGenerate } from "../src/bench/generate.ts";
import { benchLinear, linearBenchOptions } from "../src/bench/codebook_linear.ts";
import { benchCompress } from "../src/bench/compress.ts";
import { benchEval } from "../src/bench/eval.ts";
import { benchFinetuneStep } from "../src/bench/finetune.ts";
import { benchKmeans } from "../src/bench/kmeans.ts";
import { qualityRows, qualityTable } from "../src/bench/quality.ts";
import { benchMatmul } from "../src/bench/matmul.ts";
import { benchServe } from "../src/bench/serve.ts";
import { measureThroughput } from "../src/bench/timeplan.ts";
import { benchTrain } from "../src/bench/train.ts";
import { benchWeb } from "../src/bench/web.ts";
import { parseFlags } from "../src/cli/args.ts";
import { runMain } from "../src/cli/main.ts";
import { getGpu } from "../src/gpu/device.ts";

const shared = fileURLToPath(new URL("../../shared", import.meta.url));

await runMain(async (argv) => {
  const { values } = parseFlags("bench", argv, {
    quick: { type: "boolean" },
    only: { type: "string" },
  });
  const quick = Boolean(values.quick);
  const only = values.only as string | undefined;
  const gpu = await getGpu();
  const emit = (r: object) => console.log(JSON.stringify({ ...r, adapter: gpu.adapterName }));
  const want = (name: string) => !only || only === name;

  if (want("matmul")) {
    emit(await benchMatmul(gpu, 1024, 1024, 1024, quick ? 1 : 5));
    if (!quick) emit(await benchMatmul(gpu, 2048, 4096, 4096, 3));
  }
  if (want("eval")) {
    const wiki = `${shared}/data/wikitext2/wiki.test.raw`;
    for (const m of ["stories260K", "tinyllama-6.8m"]) {
      const dir = `${shared}/fixtures/${m}`;
      if (!existsSync(dir)) {
        console.error(`bench: ${dir} missing, eval skipped`);
        continue;
      }
      emit(await benchEval(dir, wiki, 128, quick ? 4 : 64));
    }
  }
  if (want("kmeans")) {
    const sizes = quick
      ? [[65536, 4, 1024]]
      : [[65536, 4, 4096], [262144, 4, 16384], [1048576, 4, 65536]];
    for (const [N, d, n] of sizes) emit(await benchKmeans(gpu, N, d, n, quick ? 3 : 20));
  }
  if (want("linear")) await benchLinear(gpu, linearBenchOptions(quick), emit);
  if (want("generate")) {
    // Per fixture: a ~2-bit compressed folder and its dense f32 decoding, prompt 64, 32 new tokens.
    const kjv = fileURLToPath(new URL("../fixtures/kjv-llama", import.meta.url));
    const models: [string, string][] = [[kjv, `${kjv}/heldout.txt`]];
    for (const m of ["stories260K", "tinyllama-6.8m"]) {
      const dir = `${shared}/fixtures/${m}`;
      if (existsSync(dir)) models.push([dir, `${shared}/data/wikitext2/wiki.test.raw`]);
      else console.error(`bench: ${dir} missing, generate skipped`);
    }
    for (const [model, text] of models) {
      const folder = await benchFolder(model, quick ? 2 : 10);
      for (const row of await benchGenerate(gpu, folder, text, 64, quick ? 8 : 32)) {
        emit({ ...row, model: model.split("/").pop() });
      }
    }
  }
  if (want("finetune")) {
    const dir = `${shared}/fixtures/tinyllama-6.8m`;
    // 1, 2, 4 and 8 windows per step, each beside the PyTorch peer at the same windows.
    for (const B of [1, 2, 4, 8]) {
      if (existsSync(dir)) emit(await benchFinetuneStep(gpu, dir, 128, quick ? 3 : 20, B));
    }
  }
  if (want("train")) {
    // Whole-model codebook training against dense training, kjv-llama at ~2 bits.
    const kjv = fileURLToPath(new URL("../fixtures/kjv-llama", import.meta.url));
    const folder = await benchFolder(kjv, quick ? 2 : 10);
    emit(await benchTrain(gpu, kjv, folder, `${kjv}/calib.txt`, 128, 4, quick ? 2 : 10));
  }
  if (want("compress")) {
    // End to end without finetuning (process start included) against faiss on the same matrices.
    const dir = `${shared}/fixtures/tinyllama-6.8m`;
    if (existsSync(dir)) emit(await benchCompress(dir, 8, 1024, quick ? 5 : 20));
    else console.error(`bench: ${dir} missing, compress skipped`);
  }
  if (want("timeplan")) emit({ name: "timeplan", ...(await measureThroughput(gpu)) });
  if (want("serve")) {
    // The OpenAI-style server on kjv-llama at ~2 bits: streamed completions, 1 / 4 / 16 clients.
    const kjv = fileURLToPath(new URL("../fixtures/kjv-llama", import.meta.url));
    const folder = await benchFolder(kjv, quick ? 2 : 10);
    const opts = { concurrency: [1, 4, 16], perClient: quick ? 1 : 3, promptTokens: 32 };
    const rows = await benchServe(gpu, folder, `${kjv}/heldout.txt`, {
      ...opts,
      maxTokens: quick ? 8 : 32,
    });
    for (const row of rows) emit({ ...row, model: "kjv-llama" });
  }
  if (want("web")) {
    // The browser page (headless Chromium's WebGPU) against `deno task generate`, greedy, on
    // kjv-llama at ~2 bits.
    const kjv = fileURLToPath(new URL("../fixtures/kjv-llama", import.meta.url));
    const folder = await benchFolder(kjv, quick ? 2 : 10);
    emit({ ...(await benchWeb(folder, "In the beginning", quick ? 8 : 32)), model: "kjv-llama" });
  }
  if (want("quality")) {
    // ClusComp (no finetuning) against RTN at the same bits: wiki ppl, seqlen 128, 64 windows.
    const wiki = `${shared}/data/wikitext2/wiki.test.raw`;
    for (const m of ["stories260K", "tinyllama-6.8m"]) {
      const dir = `${shared}/fixtures/${m}`;
      if (!existsSync(dir)) {
        console.error(`bench: ${dir} missing, quality skipped`);
        continue;
      }
      await qualityRows(dir, wiki, undefined, quick ? 8 : 64, emit);
      // RTN, GPTQ, ClusComp plain / activation-aware, +- finetuning at ~4, 3, 2.3, 2 bits.
      const stories = `${shared}/data/tinystories/tinystories_val.txt`;
      const reduced = { targets: [2.3], maxWindows: 8, epochs: 2 };
      await qualityTable(dir, wiki, stories, quick ? reduced : {}, emit);
    }
  }
});
