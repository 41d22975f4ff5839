import { exportMain } from "../src/cli/export.ts";
import { runMain } from "../src/cli/main.ts";

await runMain(exportMain);
