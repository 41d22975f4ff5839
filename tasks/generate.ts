import { generateMain } from "../src/cli/generate.ts";
import { runMain } from "../src/cli/main.ts";

await runMain(generateMain);
