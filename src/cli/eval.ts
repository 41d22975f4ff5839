// `cluscomp eval`: GPTQ-style perplexity of a model folder on a text file.
import { evaluatePerplexity } from "../eval/perplexity.ts";
import { Progress } from "../util/progress.ts";
import { bytesFlag, intFlag, parseFlags, requireString } from "./args.ts";

export const EVAL_HELP = `cluscomp eval: perplexity of a model on a text, the GPTQ way

Usage: deno task eval --model DIR --text FILE --seqlen N [--max-windows K] [--json]

  --model DIR        Hugging Face Llama-family folder (config.json, tokenizer.json, *.safetensors)
                     or a cluscomp compressed folder
  --text FILE        evaluation text; tokenized once without special tokens
  --seqlen N         window length; floor(tokens / N) non-overlapping windows (default 2048)
  --max-windows K    evaluate the first K windows only
  --gpu-memory SIZE  GPU memory the run may use, e.g. 8GB (default 2GiB)
  --json             print one JSON object on stdout instead of a line
  --quiet            no progress on stderr
  -h, --help         this text
`;

export async function evalMain(argv: string[]): Promise<number> {
  const cmd = "eval";
  const { values } = parseFlags(cmd, argv, {
    model: { type: "string" },
    text: { type: "string" },
    seqlen: { type: "string" },
    "max-windows": { type: "string" },
    "gpu-memory": { type: "string" },
    json: { type: "boolean" },
    quiet: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(EVAL_HELP);
    return 0;
  }
  const settings = {
    model: requireString(cmd, values.model, "model"),
    text: requireString(cmd, values.text, "text"),
    seqlen: intFlag(cmd, values.seqlen, "seqlen", 2, 2048),
    maxWindows: values["max-windows"] === undefined
      ? undefined
      : intFlag(cmd, values["max-windows"], "max-windows", 1),
    gpuBudget: bytesFlag(cmd, values["gpu-memory"], "gpu-memory", 2 ** 31),
  };
  const r = await evaluatePerplexity(settings, new Progress(Boolean(values.quiet)));
  if (values.json) {
    const { firstLogits: _, ...rest } = r;
    console.log(JSON.stringify(rest));
  } else {
    console.log(
      `ppl ${r.ppl.toFixed(4)}  nll ${r.nll.toFixed(6)}  ${r.windows} windows x ${r.seqlen} ` +
        `(${r.tokens} predicted tokens)  ${r.seconds.toFixed(1)} s  ` +
        `${r.tokens_per_s.toFixed(0)} tok/s  on ${r.adapter}`,
    );
  }
  return 0;
}
