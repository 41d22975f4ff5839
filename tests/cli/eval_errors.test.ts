// Bad input to `eval`: one error line naming the file or flag, a non-zero exit, no stack trace.
import assert from "node:assert/strict";
import { assertOneErrorLine } from "./errors.ts";
import { HAS_SHARED, STORIES, WIKI } from "../shared.ts";

const TASK = new URL("../../tasks/eval.ts", import.meta.url).pathname;

async function runEval(args: string[]): Promise<{ code: number; stderr: string; stdout: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", TASK, "--quiet", ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** A copy of stories260K whose files a test may break. */
async function brokenCopy(edit: (dir: string) => Promise<void>): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-bad-" });
  for (const f of ["config.json", "tokenizer.json", "model.safetensors"]) {
    await Deno.copyFile(`${STORIES}/${f}`, `${dir}/${f}`);
  }
  await edit(dir);
  return dir;
}

const cases: { name: string; args: () => Promise<string[]>; needles: string[] }[] = [
  {
    name: "non-numeric --seqlen",
    args: () => Promise.resolve(["--model", STORIES, "--text", WIKI, "--seqlen", "abc"]),
    needles: ["--seqlen", "abc"],
  },
  {
    name: "negative --max-windows",
    args: () =>
      Promise.resolve([
        "--model",
        STORIES,
        "--text",
        WIKI,
        "--seqlen",
        "128",
        "--max-windows",
        "-3",
      ]),
    needles: ["max-windows"],
  },
  {
    name: "unknown flag",
    args: () => Promise.resolve(["--model", STORIES, "--bogus", "1"]),
    needles: ["bogus"],
  },
  {
    name: "missing --model",
    args: () => Promise.resolve(["--text", WIKI]),
    needles: ["--model"],
  },
  {
    name: "missing tokenizer.json",
    args: async () => [
      "--model",
      await brokenCopy((d) => Deno.remove(`${d}/tokenizer.json`)),
      "--text",
      WIKI,
      "--seqlen",
      "128",
    ],
    needles: ["tokenizer.json"],
  },
  {
    name: "unknown model_type",
    args: async () => [
      "--model",
      await brokenCopy(async (d) => {
        const c = JSON.parse(await Deno.readTextFile(`${d}/config.json`));
        c.model_type = "gpt2";
        await Deno.writeTextFile(`${d}/config.json`, JSON.stringify(c));
      }),
      "--text",
      WIKI,
    ],
    needles: ["config.json", "gpt2"],
  },
  {
    name: "truncated safetensors",
    args: async () => [
      "--model",
      await brokenCopy(async (d) => {
        const f = await Deno.open(`${d}/model.safetensors`, { write: true });
        await f.truncate(500_000);
        f.close();
      }),
      "--text",
      WIKI,
    ],
    needles: ["model.safetensors"],
  },
  {
    name: "header length larger than the file",
    args: async () => [
      "--model",
      await brokenCopy(async (d) => {
        const b = await Deno.readFile(`${d}/model.safetensors`);
        new DataView(b.buffer).setUint32(0, 0xfffffff0, true);
        await Deno.writeFile(`${d}/model.safetensors`, b);
      }),
      "--text",
      WIKI,
    ],
    needles: ["model.safetensors", "header"],
  },
  {
    name: "empty text",
    args: async () => {
      const f = await Deno.makeTempFile({ suffix: ".txt" });
      await Deno.writeTextFile(f, "  \n");
      return ["--model", STORIES, "--text", f, "--seqlen", "128"];
    },
    needles: [".txt"],
  },
  {
    name: "text shorter than one window",
    args: async () => {
      const f = await Deno.makeTempFile({ suffix: ".txt" });
      await Deno.writeTextFile(f, "Once upon a time there was a cat.");
      return ["--model", STORIES, "--text", f, "--seqlen", "128"];
    },
    needles: ["128"],
  },
  {
    name: "missing text file",
    args: () => Promise.resolve(["--model", STORIES, "--text", "/nonexistent/wiki.txt"]),
    needles: ["/nonexistent/wiki.txt"],
  },
];

for (const c of cases) {
  Deno.test({
    name: `eval refuses ${c.name} with one clear line`,
    ignore: !HAS_SHARED,
    fn: async () => assertOneErrorLine(await runEval(await c.args()), ...c.needles),
  });
}

Deno.test({
  name: "eval --json prints one object with the documented fields",
  ignore: !HAS_SHARED,
  fn: async () => {
    const r = await runEval([
      "--model",
      STORIES,
      "--text",
      WIKI,
      "--seqlen",
      "128",
      "--max-windows",
      "4",
      "--json",
    ]);
    assert.equal(r.code, 0, r.stderr);
    const o = JSON.parse(r.stdout);
    for (const k of ["ppl", "nll", "tokens", "windows", "seqlen", "seconds", "tokens_per_s"]) {
      assert.ok(k in o, `missing ${k}`);
    }
    assert.equal(o.windows, 4);
    assert.equal(o.tokens, 4 * 127);
  },
});
