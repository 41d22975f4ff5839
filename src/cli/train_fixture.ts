// `deno task train-fixture`: flags of the fixture trainer (src/train/fixture.ts).
import { intFlag, numberFlag, parseFlags } from "./args.ts";
import { DEFAULT_OUT, type FixtureSettings, trainFixture } from "../train/fixture.ts";
import { Progress } from "../util/progress.ts";

export const TRAIN_HELP = `train-fixture: train the small KJV Llama fixture from scratch

Usage: deno task train-fixture [--steps N] [--seed S] [--out DIR] [--quick]

  --steps N      optimizer steps (default 900; 3 with --quick)
  --seed S       seeds the init and the window sampling (default 1)
  --out DIR      output folder (default ${DEFAULT_OUT})
  --batch W      windows of 256 tokens per step (default 4; 2 with --quick)
  --lr X         peak learning rate (default 0.002)
  --quick        a few steps and a short evaluation, for tests
  --quiet        no progress on stderr
  -h, --help     this text

Needs /usr/bin/bible (Debian: apt-get install bible-kjv); installed automatically when root.
`;

export async function trainFixtureMain(argv: string[]): Promise<number> {
  const cmd = "train-fixture";
  const { values } = parseFlags(cmd, argv, {
    steps: { type: "string" },
    seed: { type: "string" },
    out: { type: "string" },
    batch: { type: "string" },
    lr: { type: "string" },
    quick: { type: "boolean" },
    quiet: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(TRAIN_HELP);
    return 0;
  }
  const quick = Boolean(values.quick);
  const steps = intFlag(cmd, values.steps, "steps", 1, quick ? 3 : 900);
  const settings: FixtureSettings = {
    out: typeof values.out === "string" && values.out !== "" ? values.out : DEFAULT_OUT,
    seed: intFlag(cmd, values.seed, "seed", 0, 1),
    steps,
    batch: intFlag(cmd, values.batch, "batch", 1, quick ? 2 : 4),
    seqlen: 256,
    lr: numberFlag(cmd, values.lr, "lr", { exclusiveMin: 0, def: 0.002 }),
    warmup: Math.min(30, Math.max(1, Math.floor(steps / 20))),
    minLrRatio: 0.1,
    quick,
    ...(quick ? { evalWindows: 4 } : {}),
  };
  const r = await trainFixture(settings, new Progress(Boolean(values.quiet)));
  const t = r.training as Record<string, number>;
  console.log(
    `wrote ${settings.out}: ${r.params} parameters, ${t.steps} steps in ${t.seconds} s, ` +
      `final train loss ${t.final_train_loss}, held-out ppl ${r.heldout.ppl.toFixed(4)} ` +
      `at seqlen ${r.heldout.seqlen} (unigram ${r.unigram_ppl})`,
  );
  return 0;
}
