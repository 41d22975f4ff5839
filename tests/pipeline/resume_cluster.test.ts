// Killing compress during clustering and running it again completes only the missing blocks,
// and the output is byte-identical to an uninterrupted run.
import assert from "node:assert/strict";
import { HAS_SHARED, STORIES } from "../shared.ts";
import { assertSameOutputs, compressArgs, runTask, runUntil } from "./run.ts";

Deno.test({
  name: "compress killed during clustering resumes the missing blocks to a byte-identical output",
  ignore: !HAS_SHARED,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "cluscomp-resume-" });
    const args = (name: string) =>
      compressArgs(STORIES, `${dir}/${name}`, [
        "--bits",
        "3",
        "--d",
        "2",
        "--no-finetune",
        "--iters",
        "8",
      ]);
    const whole = await runTask("compress", args("whole"));
    assert.equal(whole.code, 0, whole.stderr);

    // Kill after the second block's checkpoint is written.
    const killed = await runUntil("compress", args("resumed"), /"stage":"cluster","done":2,/);
    assert.ok(killed.killed, "the run should have been killed before finishing");
    const again = await runTask("compress", args("resumed"));
    assert.equal(again.code, 0, again.stderr);
    const resumed = again.stderr.split("\n").filter((l) => l.includes('"resumed":"yes"'));
    assert.ok(resumed.length >= 2, `blocks 0 and 1 should be resumed:\n${again.stderr}`);
    assert.ok(!again.stderr.includes('"block":0,"matrix"'), "block 0 must not be recomputed");

    await assertSameOutputs(`${dir}/whole`, `${dir}/resumed`);
    await Deno.remove(dir, { recursive: true });
  },
});
