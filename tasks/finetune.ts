import { finetuneMain } from "../src/cli/finetune.ts";
import { runMain } from "../src/cli/main.ts";

await runMain(finetuneMain);
