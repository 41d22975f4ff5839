import { runMain } from "../src/cli/main.ts";
import { serveMain } from "../src/cli/serve.ts";

await runMain(serveMain);
