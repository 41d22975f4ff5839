// The pipeline run unattended on stories260K: SIGKILL at random moments and resume, the lock,
// the time budget, a corrupt checkpoint, the compressed and dequantized round trips, and bad
// settings. One uninterrupted run is the reference for all of them.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { hostname } from "node:os";
import { Rng } from "../../src/util/rng.ts";
import { HAS_SHARED, STORIES, TINYSTORIES, WIKI } from "../shared.ts";
import { assertSameOutputs, compressArgs, killLanded, runTask } from "./run.ts";

const FLAGS = [
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
  "2",
  "--eval-text",
  WIKI,
  "--eval-seqlen",
  "128",
  "--eval-max-windows",
  "4",
  "--json",
];
const ROOT = new URL("../../", import.meta.url).pathname;

function spawnCompress(out: string, extra: string[] = []): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      `${ROOT}tasks/compress.ts`,
      ...compressArgs(STORIES, out, [...FLAGS, ...extra]),
    ],
    stdout: "null",
    stderr: "piped",
  }).spawn();
}

Deno.test({
  name: "unattended runs: kills, lock, time budget, corrupt checkpoint, round trips, bad settings",
  ignore: !HAS_SHARED,
  fn: async (t) => {
    const dir = await Deno.makeTempDir({ prefix: "cluscomp-unattended-" });
    const whole = await runTask("compress", compressArgs(STORIES, `${dir}/whole`, FLAGS));
    assert.equal(whole.code, 0, whole.stderr);
    const report = JSON.parse(whole.stdout);
    for (const f of ["report.json", "report.md", "loss.svg", "config.json", "tokenizer.json"]) {
      assert.ok(existsSync(`${dir}/whole/${f}`), `${f} missing from the output`);
    }

    await t.step("SIGKILL at random moments, resumed each time, ends byte-identical", async () => {
      const rng = new Rng(2026);
      let landed = 0;
      for (let k = 0; k < 3; k++) {
        const child = spawnCompress(`${dir}/killed`);
        const stderr = new Response(child.stderr).text();
        await new Promise((r) => setTimeout(r, 1500 + rng.int(9000)));
        if (await killLanded(child)) landed++;
        await stderr;
      }
      // A run that finished before its kill tests nothing: at least one kill must have landed.
      assert.ok(landed >= 1, "no kill landed before its run finished");
      const last = await runTask("compress", compressArgs(STORIES, `${dir}/killed`, FLAGS));
      assert.equal(last.code, 0, last.stderr);
      await assertSameOutputs(`${dir}/whole`, `${dir}/killed`);
    });

    await t.step("a second concurrent run is refused; a stale lock is recovered", async () => {
      // Long enough (200 epochs) to still hold the lock when the second run starts; the third
      // run recomputes finetuning with the shared settings.
      const first = spawnCompress(`${dir}/locked`, ["--epochs", "200"]);
      // Read its stderr to the end (a closed pipe would end the run early), noting when
      // clustering has begun: the lock is held from then on.
      const dec = new TextDecoder();
      let begun!: () => void;
      const clustering = new Promise<void>((r) => begun = r);
      const drained = (async () => {
        let seen = "";
        for await (const chunk of first.stderr) {
          seen += dec.decode(chunk);
          if (seen.includes('"stage":"cluster"')) begun();
        }
        begun();
      })();
      await clustering;
      const second = await runTask("compress", compressArgs(STORIES, `${dir}/locked`, FLAGS));
      assert.ok(await killLanded(first), "the first run finished before it was killed");
      await drained;
      assert.equal(second.code, 1);
      assert.match(second.stderr, /is in use by process \d+/);
      // The killed process left its lock behind: a stale lock names a process that is gone.
      await Deno.writeTextFile(
        `${dir}/locked.work/lock`,
        JSON.stringify({ pid: 999_999_999, host: hostname() }),
      );
      const third = await runTask(
        "compress",
        compressArgs(STORIES, `${dir}/locked`, [...FLAGS, "--restart", "finetune"]),
      );
      assert.equal(third.code, 0, third.stderr);
      await assertSameOutputs(`${dir}/whole`, `${dir}/locked`);
    });

    await t.step("--time-budget exits 75 and a rerun finishes", async () => {
      const short = await runTask(
        "compress",
        compressArgs(STORIES, `${dir}/budget`, [...FLAGS, "--time-budget", "1s"]),
      );
      assert.equal(short.code, 75, short.stderr);
      assert.match(short.stderr, /run the same command again/);
      assert.ok(!existsSync(`${dir}/budget`), "no partial output");
      let code = 75, runs = 0;
      while (code === 75 && runs++ < 40) {
        code = (await runTask(
          "compress",
          compressArgs(STORIES, `${dir}/budget`, [...FLAGS, "--time-budget", "8s"]),
        )).code;
      }
      assert.equal(code, 0);
      await assertSameOutputs(`${dir}/whole`, `${dir}/budget`);
    });

    await t.step(
      "a flipped byte in a checkpoint is detected and only that unit recomputed",
      async () => {
        const file = `${dir}/whole.work/cluster/block-002.safetensors`;
        const bytes = await Deno.readFile(file);
        bytes[bytes.length - 5] ^= 0x40;
        await Deno.writeFile(file, bytes);
        const again = await runTask("compress", compressArgs(STORIES, `${dir}/whole`, FLAGS));
        assert.equal(again.code, 0, again.stderr);
        const resumed = (again.stderr.match(
          /"stage":"cluster","done":\d,"total":5,"block":\d,"resumed":"yes"/g,
        ) ?? []).length;
        assert.equal(resumed, 4, "four cluster blocks resumed");
        assert.match(again.stderr, /"stage":"cluster","done":3,"total":5,"block":2,"elapsed_s"/);
        assert.ok(!/"stage":"epoch"/.test(again.stderr), "finetune units stay valid");
      },
    );

    await t.step(
      "eval of the compressed and of the dequantized folder equals the report",
      async () => {
        const evalJson = async (model: string) => {
          const r = await runTask("eval", [
            "--model",
            model,
            "--text",
            WIKI,
            "--seqlen",
            "128",
            "--max-windows",
            "4",
            "--json",
            "--quiet",
          ]);
          assert.equal(r.code, 0, r.stderr);
          return JSON.parse(r.stdout).ppl as number;
        };
        assert.equal(await evalJson(`${dir}/whole`), report.ppl_compressed);
        const ex = await runTask("export", [
          "--dequantize",
          `${dir}/whole`,
          `${dir}/dense`,
          "--quiet",
        ]);
        assert.equal(ex.code, 0, ex.stderr);
        const cfg = JSON.parse(await Deno.readTextFile(`${dir}/dense/config.json`));
        assert.equal(cfg.quantization_config, undefined);
        assert.equal(await evalJson(`${dir}/dense`), report.ppl_compressed);
      },
    );

    await t.step("bad settings give one error line and leave checkpoints untouched", async () => {
      const manifest = await Deno.readFile(`${dir}/whole.work/manifest.msgpack`);
      const bad: [string[], RegExp][] = [
        [["--bits", "0"], /--bits must be a number > 0/],
        [["--bits", "3", "--d", "0"], /--d must be an integer >= 1/],
        [["--d", "2", "--n", "70000"], /n = 70000 exceeds 65536/],
        [["--d", "2", "--n", "60000"], /larger than the \d+ vectors/],
        [["--bits", "3", "--d", "2", "--restart", "bogus"], /unknown stage "bogus"/],
      ];
      for (const [flags, want] of bad) {
        const r = await runTask(
          "compress",
          compressArgs(STORIES, `${dir}/whole`, [...flags, "--no-finetune"]),
        );
        assert.notEqual(r.code, 0);
        const lines = r.stderr.trim().split("\n").filter((l) => l.startsWith("error"));
        assert.equal(lines.length, 1, r.stderr);
        assert.match(lines[0], want);
      }
      // A folder under a regular file cannot be created, even by root.
      await Deno.writeTextFile(`${dir}/plain-file`, "");
      const r = await runTask("compress", compressArgs(STORIES, `${dir}/plain-file/out`, FLAGS));
      assert.equal(r.code, 1);
      assert.match(r.stderr, /^error: Cannot write .*plain-file\/out/m);
      assert.deepEqual(await Deno.readFile(`${dir}/whole.work/manifest.msgpack`), manifest);
    });
    await Deno.remove(dir, { recursive: true });
  },
});
