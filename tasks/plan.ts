import { runMain } from "../src/cli/main.ts";
import { planMain } from "../src/cli/plan.ts";

await runMain(planMain);
