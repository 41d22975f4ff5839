// Killing compress during finetuning (mid-block, after an epoch checkpoint) and rerunning it
// gives byte-identical final codebooks.
import assert from "node:assert/strict";
import { HAS_SHARED, STORIES, TINYSTORIES } from "../shared.ts";
import { assertSameOutputs, compressArgs, runTask, runUntil } from "./run.ts";

Deno.test({
  name: "compress killed during finetuning resumes to byte-identical codebooks",
  ignore: !HAS_SHARED,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "cluscomp-ft-resume-" });
    const args = (name: string) =>
      compressArgs(STORIES, `${dir}/${name}`, [
        "--bits",
        "3",
        "--d",
        "2",
        "--iters",
        "5",
        "--calib",
        TINYSTORIES,
        "--calib-samples",
        "12",
        "--calib-seqlen",
        "64",
        "--epochs",
        "3",
        "--patience",
        "3",
      ]);
    const whole = await runTask("compress", args("whole"));
    assert.equal(whole.code, 0, whole.stderr);

    // Kill inside block 1, after at least one of its epochs was checkpointed.
    const killed = await runUntil(
      "compress",
      args("resumed"),
      /"stage":"epoch","done":1,"total":3,"block":1,/,
    );
    assert.ok(killed.killed, "the run should have been killed before finishing");
    const again = await runTask("compress", args("resumed"));
    assert.equal(again.code, 0, again.stderr);
    assert.ok(
      again.stderr.includes('"stage":"finetune","done":1,"total":5,"block":0,"resumed":"yes"'),
      "block 0 must come from its checkpoint",
    );
    assert.ok(!again.stderr.includes('"block":1,"epoch":1,'), "block 1 must resume after epoch 1");

    await assertSameOutputs(`${dir}/whole`, `${dir}/resumed`);
    await Deno.remove(dir, { recursive: true });
  },
});
