import { evalMain } from "../src/cli/eval.ts";
import { runMain } from "../src/cli/main.ts";

await runMain(evalMain);
