// The cached (d, n) plan in the work directory is checked when read back: a hand-edited or
// truncated plan file is planned again, never used.
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { compress } from "../../src/pipeline/compress.ts";
import { Progress } from "../../src/util/progress.ts";
import { quickSettings } from "../settings.ts";

const KJV = fileURLToPath(new URL("../../fixtures/kjv-llama", import.meta.url));

Deno.test("a corrupt cached plan is planned again, and the run resumes to the same output", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-plan-cache-" });
  const s = quickSettings(KJV, dir, { d: 4, n: 16, iters: 2 });
  const first = await compress(s, new Progress(true));
  const plans = [...Deno.readDirSync(`${dir}/work/plans`)].map((e) => e.name);
  assert.equal(plans.length, 1);
  const path = `${dir}/work/plans/${plans[0]}`;
  for (const bad of ['[{"kind": "q", "d": "4"}]', "[", "{}"]) {
    await Deno.writeTextFile(path, bad);
    const again = await compress(s, new Progress(true));
    assert.deepEqual(again.plan, first.plan, `plan after a cached file of ${bad}`);
    assert.ok(again.blocks.every((b) => b.resumed), "the blocks resume");
    assert.deepEqual(JSON.parse(await Deno.readTextFile(path)), first.plan, "plan rewritten");
  }
  await Deno.remove(dir, { recursive: true });
});
