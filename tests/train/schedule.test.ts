// Learning-rate schedules at their boundary steps (steps count from 1).
import assert from "node:assert/strict";
import { UserError } from "../../src/errors.ts";
import { learningRate, type ScheduleSettings } from "../../src/train/schedule.ts";

const close = (got: number, want: number, what: string) =>
  assert.ok(Math.abs(got - want) <= 1e-12, `${what}: got ${got}, want ${want}`);

Deno.test("linear: warmup from 0 to lr over `warmup` steps, then linear decay to 0 at total", () => {
  const s: ScheduleSettings = { lr: 1e-3, warmup: 10, total: 110, schedule: "linear" };
  close(learningRate(0, s), 0, "step 0");
  close(learningRate(1, s), 1e-4, "step 1");
  close(learningRate(5, s), 5e-4, "step 5");
  close(learningRate(10, s), 1e-3, "end of warmup");
  close(learningRate(11, s), 1e-3 * 99 / 100, "first decay step");
  close(learningRate(60, s), 5e-4, "halfway through the decay");
  close(learningRate(109, s), 1e-5, "step total - 1");
  close(learningRate(110, s), 0, "step total");
  close(learningRate(500, s), 0, "past total");
  // non-increasing after the warmup
  for (let t = 11; t <= 110; t++) assert.ok(learningRate(t, s) <= learningRate(t - 1, s));
});

Deno.test("no warmup: step 1 uses the full lr", () => {
  const s: ScheduleSettings = { lr: 2, warmup: 0, total: 4, schedule: "linear" };
  assert.deepEqual([1, 2, 3, 4].map((t) => learningRate(t, s)), [1.5, 1, 0.5, 0]);
  close(learningRate(0, s), 2, "step 0");
});

Deno.test("cosine: the same warmup, half the lr halfway, minLr at total", () => {
  const s: ScheduleSettings = { lr: 1, warmup: 4, total: 24, schedule: "cosine" };
  close(learningRate(2, s), 0.5, "warmup");
  close(learningRate(4, s), 1, "end of warmup");
  close(learningRate(14, s), 0.5, "halfway");
  close(learningRate(9, s), 0.5 * (1 + Math.cos(Math.PI / 4)), "quarter");
  close(learningRate(24, s), 0, "total");
  const m = { ...s, minLr: 0.1 };
  close(learningRate(14, m), 0.55, "halfway with minLr");
  close(learningRate(24, m), 0.1, "total with minLr");
  close(learningRate(2, m), 0.5, "warmup ignores minLr");
  const lin = { ...s, schedule: "linear" as const, minLr: 0.2 };
  close(learningRate(14, lin), 0.6, "linear halfway with minLr");
  close(learningRate(24, lin), 0.2, "linear total with minLr");
});

Deno.test("constant: warmup, then lr until the end", () => {
  const s: ScheduleSettings = { lr: 3, warmup: 3, total: 10, schedule: "constant" };
  assert.deepEqual([1, 2, 3, 4, 10, 11].map((t) => learningRate(t, s)), [1, 2, 3, 3, 3, 3]);
});

Deno.test("bad settings are UserErrors", () => {
  const s: ScheduleSettings = { lr: 1, warmup: 2, total: 10, schedule: "linear" };
  for (
    const bad of [
      { ...s, warmup: 11 },
      { ...s, warmup: -1 },
      { ...s, total: 0 },
      { ...s, lr: -1 },
      { ...s, lr: NaN },
      { ...s, minLr: 2 },
      { ...s, schedule: "step" as "linear" },
    ]
  ) assert.throws(() => learningRate(1, bad), UserError, JSON.stringify(bad));
  assert.throws(() => learningRate(1.5, s));
  assert.throws(() => learningRate(-1, s));
  // warmup == total: warmup only
  close(learningRate(10, { ...s, warmup: 10 }), 1, "warmup == total");
});
