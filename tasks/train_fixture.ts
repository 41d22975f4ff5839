// `deno task train-fixture`: trains fixtures/kjv-llama from scratch (see src/train/fixture.ts).
import { runMain } from "../src/cli/main.ts";
import { trainFixtureMain } from "../src/cli/train_fixture.ts";

await runMain(trainFixtureMain);
