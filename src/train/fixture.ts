// `deno task train-fixture`: trains the small KJV Llama fixture from scratch and writes it as a
// Hugging Face folder (config.json, BF16 model.safetensors, tokenizer.json,
// tokenizer_config.json) with calib.txt, heldout.txt, train.json and a README.
import { join } from "node:path";
import { bpeVocabSize, tokenizerConfigJson, tokenizerJson, trainBpe } from "./bpe.ts";
import {
  chapterText,
  ensureBible,
  parseBible,
  readBible,
  splitChapters,
  spreadSample,
} from "./kjv.ts";
import { Trainer } from "./trainer.ts";
import { evaluatePerplexity } from "../eval/perplexity.ts";
import { getGpu } from "../gpu/device.ts";
import { parseConfig } from "../io/config.ts";
import { writeSafetensors } from "../io/safetensors.ts";
import { gptqWindows } from "../io/text.ts";
import { Tokenizer } from "../io/tokenizer.ts";
import { writeFileAtomic } from "../io/atomic.ts";
import { sha256File } from "../io/hash.ts";
import { Progress } from "../util/progress.ts";
import { Rng } from "../util/rng.ts";

export const DEFAULT_OUT = "fixtures/kjv-llama";
export const EVAL_SEQLEN = 128;

export interface FixtureSettings {
  out: string;
  seed: number;
  steps: number;
  /** Windows of `seqlen` tokens per optimizer step. */
  batch: number;
  seqlen: number;
  lr: number;
  /** Linear warmup steps; then cosine decay to lr * minLrRatio at the last step. */
  warmup: number;
  minLrRatio: number;
  quick: boolean;
  /** Held-out windows evaluated (all when undefined). */
  evalWindows?: number;
}

/** The fixture's architecture (HF config.json), vocab filled in from the tokenizer. */
export function fixtureConfig(
  vocab: number,
  bosId: number,
  eosId: number,
): Record<string, unknown> {
  return {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: 128,
    intermediate_size: 384,
    num_hidden_layers: 4,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: 32,
    vocab_size: vocab,
    max_position_embeddings: 256,
    rms_norm_eps: 1e-5,
    rope_theta: 10000.0,
    hidden_act: "silu",
    attention_bias: false,
    attention_dropout: 0.0,
    mlp_bias: false,
    tie_word_embeddings: false,
    bos_token_id: bosId,
    eos_token_id: eosId,
    torch_dtype: "bfloat16",
    initializer_range: 0.02,
    pretraining_tp: 1,
    rope_scaling: null,
    use_cache: true,
  };
}

export const VOCAB = 1024;
const SAMPLE_BYTES = 150_000;

/** Learning rate of step s (0-based): linear warmup, then cosine to lr * minLrRatio. */
export function lrAt(s: FixtureSettings, step: number): number {
  if (step < s.warmup) return (s.lr * (step + 1)) / s.warmup;
  const span = Math.max(1, s.steps - 1 - s.warmup);
  const p = Math.min(1, (step - s.warmup) / span);
  const min = s.lr * s.minLrRatio;
  return min + 0.5 * (s.lr - min) * (1 + Math.cos(Math.PI * p));
}

export interface FixtureReport {
  [key: string]: unknown;
  heldout: {
    file: string;
    ppl: number;
    nll: number;
    windows: number;
    tokens: number;
    seqlen: number;
  };
}

const enc = new TextEncoder();
const write = (path: string, text: string) => writeFileAtomic(path, enc.encode(text));

/** Mean NLL of an add-one unigram model from `train` counts over the eval windows' targets. */
function unigramNll(train: Int32Array, windows: Int32Array[], vocab: number): number {
  const counts = new Float64Array(vocab).fill(1);
  for (const id of train) counts[id]++;
  const total = train.length + vocab;
  let sum = 0, n = 0;
  for (const w of windows) {
    for (let t = 1; t < w.length; t++) {
      sum -= Math.log(counts[w[t]] / total);
      n++;
    }
  }
  return sum / n;
}

/** Trains and writes the fixture; returns what train.json records. */
export async function trainFixture(s: FixtureSettings, progress: Progress): Promise<FixtureReport> {
  const t0 = performance.now();
  await ensureBible((m) => progress.note("train-fixture", m));
  const chapters = parseBible(await readBible());
  const split = splitChapters(chapters);
  const trainText = split.train.map(chapterText).join("");
  const heldoutAll = split.heldout.map(chapterText).join("");
  const heldoutText = spreadSample(split.heldout, SAMPLE_BYTES);
  const calibText = spreadSample(split.train, SAMPLE_BYTES);
  progress.note(
    "train-fixture",
    `${chapters.length} chapters: ${split.train.length} for training (${
      enc.encode(trainText).length
    } bytes), ${split.heldout.length} held out (${enc.encode(heldoutAll).length} bytes)`,
  );

  const bpe = trainBpe(trainText, { vocabSize: VOCAB });
  const vocab = bpeVocabSize(bpe);
  const tokJson = tokenizerJson(bpe);
  const tokCfg = tokenizerConfigJson(bpe, 256);
  const tokenizer = Tokenizer.fromJson(tokJson, "tokenizer.json", tokCfg);
  const trainIds = tokenizer.encode(trainText);
  const cfgJson = fixtureConfig(vocab, bpe.specials[0].id, bpe.specials[1].id);
  const cfg = parseConfig(cfgJson, "config.json");
  progress.note(
    "train-fixture",
    `tokenizer: ${vocab} ids, ${bpe.merges.length} merges; training text ${trainIds.length} tokens`,
  );

  const gpu = await getGpu();
  const trainer = await Trainer.create(gpu, cfg, { seqlen: s.seqlen, seed: s.seed });
  const params = trainer.parameterCount;
  const data = new Rng(s.seed ^ 0x5eed5eed);
  const losses: number[] = [];
  const tStart = performance.now();
  try {
    for (let step = 0; step < s.steps; step++) {
      const windows: Int32Array[] = [];
      for (let i = 0; i < s.batch; i++) {
        const at = data.int(trainIds.length - s.seqlen);
        windows.push(trainIds.slice(at, at + s.seqlen + 1));
      }
      const lr = lrAt(s, step);
      const loss = await trainer.step(windows, lr);
      if (!Number.isFinite(loss)) throw new Error(`training diverged at step ${step + 1}`);
      losses.push(loss);
      progress.update({ stage: "train", done: step + 1, total: s.steps, loss, lr });
    }
    await gpu.sync();
  } catch (e) {
    trainer.release();
    throw e;
  }
  const trainSeconds = (performance.now() - tStart) / 1000;
  const tensors = await trainer.bf16Tensors();
  trainer.release();

  await Deno.mkdir(s.out, { recursive: true });
  await writeSafetensors(join(s.out, "model.safetensors"), tensors, { format: "pt" });
  await write(join(s.out, "config.json"), JSON.stringify(cfgJson, null, 2) + "\n");
  await write(join(s.out, "tokenizer.json"), JSON.stringify(tokJson, null, 2) + "\n");
  await write(join(s.out, "tokenizer_config.json"), JSON.stringify(tokCfg, null, 2) + "\n");
  await write(join(s.out, "calib.txt"), calibText);
  await write(join(s.out, "heldout.txt"), heldoutText);

  // Held-out perplexity exactly as `deno task eval` computes it, on the written BF16 model.
  const heldoutPath = join(s.out, "heldout.txt");
  const ev = await evaluatePerplexity({
    model: s.out,
    text: heldoutPath,
    seqlen: EVAL_SEQLEN,
    maxWindows: s.evalWindows,
  }, progress);
  const evalWindows = gptqWindows(tokenizer.encode(heldoutText), EVAL_SEQLEN, s.evalWindows);
  const uni = unigramNll(trainIds, evalWindows, vocab);
  const tail = losses.slice(-Math.min(20, losses.length));
  const files: Record<string, { bytes: number; sha256: string }> = {};
  for (
    const f of [
      "config.json",
      "model.safetensors",
      "tokenizer.json",
      "tokenizer_config.json",
      "calib.txt",
      "heldout.txt",
    ]
  ) {
    const p = join(s.out, f);
    files[f] = { bytes: (await Deno.stat(p)).size, sha256: await sha256File(p) };
  }
  const curve: { step: number; loss: number }[] = [];
  const every = Math.max(1, Math.floor(s.steps / 40));
  for (let i = 0; i < losses.length; i += every) {
    const part = losses.slice(i, i + every);
    curve.push({
      step: i + part.length,
      loss: round(part.reduce((a, b) => a + b, 0) / part.length),
    });
  }
  const report: FixtureReport = {
    command: `deno task train-fixture --seed ${s.seed} --steps ${s.steps}${
      s.quick ? " --quick" : ""
    }`,
    seed: s.seed,
    quick: s.quick,
    data: {
      source: "Debian bible-kjv-text via `bible gen1:1-rev22:21`",
      chapters: chapters.length,
      split: "every 10th chapter (10th, 20th, ... of the whole Bible) held out",
      train_chapters: split.train.length,
      train_bytes: enc.encode(trainText).length,
      train_tokens: trainIds.length,
      heldout_chapters: split.heldout.length,
      heldout_bytes: enc.encode(heldoutAll).length,
      heldout_txt_bytes: enc.encode(heldoutText).length,
      calib_txt_bytes: enc.encode(calibText).length,
    },
    tokenizer: { vocab, merges: bpe.merges.length, specials: bpe.specials.map((x) => x.content) },
    params,
    training: {
      steps: s.steps,
      windows_per_step: s.batch,
      seqlen: s.seqlen,
      tokens_seen: s.steps * s.batch * s.seqlen,
      optimizer: "AdamW beta1 0.9, beta2 0.95, eps 1e-8, weight decay 0.1 on matrices only",
      lr: s.lr,
      warmup_steps: s.warmup,
      min_lr: s.lr * s.minLrRatio,
      schedule: "linear warmup, cosine decay",
      init: "normal(0, 0.02); o_proj and down_proj 0.02 / sqrt(2 * layers); norms 1",
      seconds: round(trainSeconds, 1),
      final_train_loss: round(tail.reduce((a, b) => a + b, 0) / tail.length),
      final_train_loss_steps: tail.length,
      loss_curve: curve,
    },
    heldout: {
      file: "heldout.txt",
      seqlen: EVAL_SEQLEN,
      windows: ev.windows,
      tokens: ev.tokens,
      nll: ev.nll,
      ppl: ev.ppl,
    },
    unigram_ppl: round(Math.exp(uni), 2),
    adapter: gpu.adapterName,
    total_seconds: round((performance.now() - t0) / 1000, 1),
    files,
  };
  await write(join(s.out, "train.json"), JSON.stringify(report, null, 2) + "\n");
  await write(join(s.out, "README.md"), readme(report, s.out));
  return report;
}

function round(x: number, digits = 4): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** The fixture's README.md, from what train.json records. */
export function readme(r: FixtureReport, out: string): string {
  const d = r.data as Record<string, number>;
  const t = r.training as Record<string, number>;
  const tok = r.tokenizer as { vocab: number; merges: number };
  const files = r.files as Record<string, { bytes: number; sha256: string }>;
  const h = r.heldout;
  const mins = (t.seconds / 60).toFixed(1);
  const p = (...lines: string[]) => lines.join(" ");
  return [
    "# kjv-llama",
    "",
    p(
      "A small Llama (`LlamaForCausalLM`) trained from scratch with cluscomp's own WebGPU kernels",
      "(forward, backward, AdamW) on the King James Bible (public domain), by",
      `\`${r.command}\`.`,
      "It is the project's default model: small enough to compress, finetune and evaluate in",
      "minutes on a CPU.",
    ),
    ...(r.quick
      ? ["", "**This is a --quick run (a few steps, for tests), not the real fixture.**"]
      : []),
    "",
    "## Model",
    "",
    p(
      "hidden 128, FFN 384 (SwiGLU), 4 layers, 4 attention heads, 2 key/value heads (GQA, head_dim",
      "32), RMSNorm eps 1e-5, RoPE theta 10000, max_position_embeddings 256, untied `lm_head`,",
      `vocabulary ${tok.vocab} (byte-level BPE in the GPT-2 style, ${tok.merges} merges trained on`,
      "the training part; `<|begin_of_text|>` and `<|end_of_text|>` are the last two ids), BF16",
      `weights, ${r.params} parameters.`,
    ),
    "",
    "## Data and split",
    "",
    p(
      "Debian's `bible-kjv-text` (`apt-get install bible-kjv`, then `bible gen1:1-rev22:21`),",
      "normalized to one verse per line (verse numbers dropped, wrapped lines joined) under a",
      `"Book N" heading line per chapter, chapters separated by a blank line. Of ${d.chapters}`,
      "chapters, every 10th (the 10th, 20th, ... in Bible order:",
      `${d.heldout_chapters} chapters, ${d.heldout_bytes} bytes) is held out and never trained on;`,
      `the other ${d.train_chapters} chapters (${d.train_bytes} bytes, ${d.train_tokens} tokens)`,
      "are the training text, and the tokenizer is trained on them only.",
    ),
    "",
    p(
      `- \`heldout.txt\` (${d.heldout_txt_bytes} bytes): held-out chapters spread over the whole`,
      "Bible (every k-th held-out chapter), for evaluation.",
    ),
    p(
      `- \`calib.txt\` (${d.calib_txt_bytes} bytes): training chapters spread over the whole`,
      "Bible, for finetuning calibration.",
    ),
    "",
    "## Training",
    "",
    p(
      `Seed ${r.seed}; ${t.steps} AdamW steps of ${t.windows_per_step} windows x ${t.seqlen} tokens`,
      `(${t.tokens_seen} tokens seen; window starts drawn uniformly from the training tokens with`,
      "the seed), mean next-token cross-entropy; learning rate",
      `${t.lr} after ${t.warmup_steps} linear warmup steps, cosine decay to ${t.min_lr}; beta1 0.9,`,
      "beta2 0.95, eps 1e-8, weight decay 0.1 on matrices (not on norms); init normal(0, 0.02),",
      "o_proj and down_proj scaled by 1 / sqrt(2 * layers). Each layer's forward is recomputed",
      "during the backward (only layer inputs are stored).",
      `Training took ${mins} minutes on ${r.adapter}; final training loss`,
      `${t.final_train_loss} nats/token (mean of the last ${t.final_train_loss_steps} steps).`,
      "The same seed on the same WebGPU driver gives a byte-identical `model.safetensors`.",
    ),
    "",
    "## Held-out perplexity",
    "",
    "```sh",
    `deno task eval --model ${out} --text ${out}/heldout.txt --seqlen ${h.seqlen}`,
    "```",
    "",
    "| text | seqlen | windows | predicted tokens | nll | ppl |",
    "| --- | --- | --- | --- | --- | --- |",
    `| heldout.txt | ${h.seqlen} | ${h.windows} | ${h.tokens} | ${h.nll.toFixed(6)} | ${
      h.ppl.toFixed(4)
    } |`,
    "",
    p(
      "For comparison, a unigram model (add-one token frequencies of the training text) has",
      `perplexity ${r.unigram_ppl} on the same tokens. \`train.json\` holds these numbers and`,
      "the loss curve.",
    ),
    "",
    "## Files",
    "",
    "| file | bytes | sha256 |",
    "| --- | --- | --- |",
    ...Object.entries(files).map(([f, x]) => `| \`${f}\` | ${x.bytes} | \`${x.sha256}\` |`),
    "",
  ].join("\n");
}
