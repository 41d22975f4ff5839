// `cluscomp generate`: text from a dense or compressed model folder, streamed as it is produced.
import { UserError } from "../errors.ts";
import { getGpu } from "../gpu/device.ts";
import { StopFilter, TextStream } from "../io/detok.ts";
import { Tokenizer } from "../io/tokenizer.ts";
import { openModel } from "../format/open.ts";
import { generate, type GenerateResult, Runner } from "../model/runner.ts";
import { bytesFlag, intFlag, numberFlag, parseFlags, requireString } from "./args.ts";

export const GENERATE_HELP = `cluscomp generate: text from a model, streamed as it is produced

Usage: deno task generate --model DIR (--prompt TEXT | --prompt-file FILE) [options]

  --model DIR           Hugging Face Llama-family folder or a cluscomp compressed folder
  --prompt TEXT         the prompt (encoded with the tokenizer's BOS when it has one)
  --prompt-file FILE    read the prompt from FILE ("-" = stdin); one trailing newline is dropped
  --max-new-tokens N    most tokens to generate (default 128)
  --temperature T       0 = greedy (default); otherwise sample from softmax(logits / T)
  --top-k K             sample among the K most probable tokens only (default 0 = off)
  --top-p P             sample from the smallest set of tokens with mass >= P, in (0, 1]
                        (default 1 = off); applied after --top-k
  --seed S              sampling seed (default 0); the same seed gives the same text
  --stop STRING         stop when the text contains STRING (repeatable); the output ends before it
  --context N           tokens the KV cache holds (default and most: max_position_embeddings);
                        generation ends when it is full
  --gpu-memory SIZE     refuse to run when the model takes more GPU memory than SIZE, e.g. 8GB
  --json                print one JSON object at the end instead of streaming the text
  --quiet               no summary line on stderr
  -h, --help            this text

Generation ends at the model's end-of-text token, after --max-new-tokens tokens, at a --stop
string, or when the context is full. Only the generated text is printed (not the prompt).
`;

interface PromptSource {
  text: string;
  /** How the errors name it. */
  label: string;
}

async function readPrompt(values: Record<string, unknown>): Promise<PromptSource> {
  const cmd = "generate";
  const inline = values.prompt;
  const file = values["prompt-file"];
  if ((inline === undefined) === (file === undefined)) {
    throw new UserError(`${cmd}: give exactly one of --prompt TEXT and --prompt-file FILE`);
  }
  if (typeof inline === "string") {
    if (inline.trim() === "") throw new UserError(`${cmd}: --prompt is empty`);
    return { text: inline, label: "--prompt" };
  }
  const path = String(file);
  if (path === "") throw new UserError(`${cmd}: --prompt-file needs a file name ("-" = stdin)`);
  const label = path === "-" ? "--prompt-file - (stdin)" : `--prompt-file ${path}`;
  let text: string;
  try {
    text = path === "-"
      ? await new Response(Deno.stdin.readable).text()
      : await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UserError(`${cmd}: ${label}: no such file`);
    if (e instanceof Deno.errors.IsADirectory) {
      throw new UserError(`${cmd}: ${label}: is a folder, not a file`);
    }
    throw new UserError(`${cmd}: ${label}: cannot read (${(e as Error).message.split("\n")[0]})`);
  }
  text = text.replace(/\r?\n$/, "");
  if (text.trim() === "") throw new UserError(`${cmd}: ${label} is empty`);
  return { text, label };
}

async function checkFolder(dir: string): Promise<void> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(dir);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new UserError(`generate: --model ${dir}: no such folder`);
    }
    throw e;
  }
  if (!info.isDirectory) throw new UserError(`generate: --model ${dir}: not a folder`);
}

/** Writes all of `bytes` to stdout. */
async function writeOut(bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await Deno.stdout.write(bytes.subarray(off));
}

export async function generateMain(argv: string[]): Promise<number> {
  const cmd = "generate";
  const { values } = parseFlags(cmd, argv, {
    model: { type: "string" },
    prompt: { type: "string" },
    "prompt-file": { type: "string" },
    "max-new-tokens": { type: "string" },
    temperature: { type: "string" },
    "top-k": { type: "string" },
    "top-p": { type: "string" },
    seed: { type: "string" },
    stop: { type: "string", multiple: true },
    context: { type: "string" },
    "gpu-memory": { type: "string" },
    json: { type: "boolean" },
    quiet: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(GENERATE_HELP);
    return 0;
  }
  const model = requireString(cmd, values.model, "model");
  const maxNewTokens = intFlag(cmd, values["max-new-tokens"], "max-new-tokens", 1, 128);
  const temperature = numberFlag(cmd, values.temperature, "temperature", { min: 0, def: 0 });
  const topK = intFlag(cmd, values["top-k"], "top-k", 0, 0);
  const topP = values["top-p"] === undefined ? 1 : Number(values["top-p"]);
  if (String(values["top-p"]).trim() === "" || !(topP > 0 && topP <= 1)) {
    throw new UserError(`${cmd}: --top-p must be a number in (0, 1] (got "${values["top-p"]}")`);
  }
  const seed = intFlag(cmd, values.seed, "seed", 0, 0);
  const stops = (values.stop as unknown as string[] | undefined) ?? [];
  if (stops.some((s) => s === "")) throw new UserError(`${cmd}: --stop must not be empty`);
  const contextFlag = values.context === undefined
    ? undefined
    : intFlag(cmd, values.context, "context", 1);
  const gpuBudget = values["gpu-memory"] === undefined
    ? undefined
    : bytesFlag(cmd, values["gpu-memory"], "gpu-memory");
  const json = Boolean(values.json);
  const quiet = Boolean(values.quiet);

  const prompt = await readPrompt(values);
  await checkFolder(model);
  const { cfg, index, source } = await openModel(model);
  try {
    if (contextFlag !== undefined && contextFlag > cfg.maxPositions) {
      throw new UserError(
        `${cmd}: --context ${contextFlag} is more than the model's max_position_embeddings ` +
          `(${cfg.maxPositions})`,
      );
    }
    const context = contextFlag ?? cfg.maxPositions;
    const tokenizer = await Tokenizer.load(model);
    const ids = tokenizer.encode(prompt.text, { addBos: true });
    if (ids.length > context) {
      const limit = contextFlag !== undefined
        ? `--context ${context}`
        : `the model's max_position_embeddings (${context})`;
      throw new UserError(
        `${cmd}: the prompt (${prompt.label}) is ${ids.length} tokens, more than ${limit}`,
      );
    }
    const cfgEos = Array.isArray(cfg.eosId) ? cfg.eosId[0] : cfg.eosId;
    const eosId = tokenizer.eosId ?? cfgEos ?? null;

    const gpu = await getGpu();
    const runner = await Runner.create(gpu, cfg, source, { maxContext: context });
    try {
      if (gpuBudget !== undefined && gpu.bytesPeak > gpuBudget) {
        throw new UserError(
          `${cmd}: --gpu-memory ${values["gpu-memory"]}: the model takes ` +
            `${(gpu.bytesPeak / 2 ** 20).toFixed(1)} MiB of GPU memory ` +
            `(weights ${(runner.weightBytes / 2 ** 20).toFixed(1)} MiB + KV cache and buffers)`,
        );
      }
      const stream = new TextStream(tokenizer, ids);
      const filter = new StopFilter(stops);
      const enc = new TextEncoder();
      let text = "";
      let writes = Promise.resolve();
      let closed = false; // stdout went away (a closed pipe) or failed: stop generating
      let writeError: unknown = null;
      const emit = (piece: string) => {
        if (piece === "") return;
        text += piece;
        if (json || closed) return;
        const bytes = enc.encode(piece);
        writes = writes.then(() => writeOut(bytes)).catch((e) => {
          closed = true;
          if (!(e instanceof Deno.errors.BrokenPipe)) writeError = e;
        });
      };
      const r: GenerateResult = await generate(runner, ids, {
        maxNewTokens,
        temperature,
        topK,
        topP,
        seed,
        eosId,
        onToken: (id) => {
          const out = filter.push(stream.push(id));
          emit(out.text);
          return out.stopped || closed;
        },
      });
      if (!filter.stopped) {
        emit(filter.push(stream.flush()).text);
        emit(filter.flush());
      }
      if (!json) emit("\n");
      await writes;
      if (writeError !== null) throw writeError;
      if (json) {
        console.log(JSON.stringify({
          text,
          ids: r.ids,
          prompt_tokens: r.promptTokens,
          generated_tokens: r.ids.length,
          ttft_ms: r.ttftMs,
          tokens_per_s: r.decodeTokensPerS,
          prefill_tokens_per_s: r.prefillTokensPerS,
          stop_reason: r.stopReason,
          weight_bytes: runner.weightBytes,
          adapter: gpu.adapterName,
        }));
      }
      if (!quiet) {
        console.error(
          `${r.promptTokens} prompt + ${r.ids.length} generated tokens (${r.stopReason})  ` +
            `ttft ${r.ttftMs.toFixed(0)} ms  prefill ${r.prefillTokensPerS.toFixed(1)} tok/s  ` +
            `decode ${r.decodeTokensPerS.toFixed(1)} tok/s  on ${gpu.adapterName}`,
        );
      }
    } finally {
      runner.release();
    }
  } finally {
    index.close();
  }
  return 0;
}
