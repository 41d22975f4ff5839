// Bad GPTQ settings to `compress`: exit 1 with one error line naming the flag, before any work
// and without an output folder.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { HAS_SHARED, STORIES } from "../shared.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const KJV = `${ROOT}fixtures/kjv-llama`;

async function runCompress(args: string[]): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}tasks/compress.ts`, "--quiet", ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

const bad: { flags: string[]; want: RegExp; shared?: boolean }[] = [
  { flags: ["--method", "gptq"], want: /--method gptq needs --bits/ },
  { flags: ["--method", "gptq", "--bits", "2.5"], want: /--method gptq needs an integer --bits/ },
  { flags: ["--method", "gptq", "--bits", "3", "--damp=-1"], want: /--damp must be/ },
  { flags: ["--method", "gptq", "--bits", "3", "--group", "0"], want: /--group/ },
  {
    flags: ["--method", "rtn", "--bits", "3", "--act-order"],
    want: /--act-order is for --method gptq/,
  },
  { flags: ["--bits", "2", "--no-finetune", "--damp", "0.1"], want: /--damp is for --method gptq/ },
  { flags: ["--method", "gptqq", "--bits", "3"], want: /--method must be cluscomp, rtn or gptq/ },
  // Without calibration text there is no Hessian (the embedded model brings its own text).
  {
    flags: ["--method", "gptq", "--bits", "3", "--model", STORIES],
    want: /--method gptq needs calibration text: give --calib FILE/,
    shared: true,
  },
];

Deno.test("compress: bad GPTQ settings exit 1 with one line naming the flag", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-gptq-bad-" });
  try {
    const cases = bad.filter((c) => HAS_SHARED || !c.shared);
    const results = await Promise.all(
      cases.map(({ flags }, i) =>
        runCompress(["--model", KJV, "--out", `${dir}/out${i}`, ...flags])
      ),
    );
    results.forEach((r, i) => {
      const { flags, want } = cases[i];
      assert.equal(r.code, 1, `${flags.join(" ")}: exit ${r.code}\n${r.stderr}`);
      const lines = r.stderr.trim().split("\n").filter((l) => l.trim() && !l.includes("MESA"));
      assert.equal(lines.length, 1, `${flags.join(" ")}: one line expected, got\n${r.stderr}`);
      assert.match(lines[0], /^error: /);
      assert.match(lines[0], want, flags.join(" "));
      assert.doesNotMatch(r.stderr, /internal error|\n\s+at /);
      assert.ok(!existsSync(`${dir}/out${i}`), `${flags.join(" ")}: no output folder`);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
