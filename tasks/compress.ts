import { compressMain } from "../src/cli/compress.ts";
import { runMain } from "../src/cli/main.ts";

await runMain(compressMain);
