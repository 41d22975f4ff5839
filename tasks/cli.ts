// The single-binary entry: `cluscomp <command> [flags]`.
import { compressMain } from "../src/cli/compress.ts";
import { evalMain } from "../src/cli/eval.ts";
import { exportMain } from "../src/cli/export.ts";
import { finetuneMain } from "../src/cli/finetune.ts";
import { generateMain } from "../src/cli/generate.ts";
import { planMain } from "../src/cli/plan.ts";
import { serveMain } from "../src/cli/serve.ts";
import { runMain } from "../src/cli/main.ts";
import { UserError } from "../src/errors.ts";

const COMMANDS: Record<string, (argv: string[]) => Promise<number>> = {
  compress: compressMain,
  eval: evalMain,
  export: exportMain,
  finetune: finetuneMain,
  generate: generateMain,
  plan: planMain,
  serve: serveMain,
};

await runMain((argv) => {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === "-h" || cmd === "--help") {
    console.log(`Usage: cluscomp <${Object.keys(COMMANDS).join("|")}> [flags]   (--help on each)`);
    return Promise.resolve(0);
  }
  const fn = COMMANDS[cmd];
  if (!fn) {
    throw new UserError(`unknown command "${cmd}" (use ${Object.keys(COMMANDS).join(", ")})`);
  }
  return fn(rest);
});
