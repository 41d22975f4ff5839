// Bad input to `generate`: one error line naming the flag or file, a non-zero exit, no stack
// trace; and one happy path (--json on the embedded kjv-llama model).
import assert from "node:assert/strict";
import { fromFileUrl } from "../util.ts";
import { assertOneErrorLine } from "./errors.ts";

const TASK = fromFileUrl(new URL("../../tasks/generate.ts", import.meta.url));
const KJV = fromFileUrl(new URL("../../fixtures/kjv-llama", import.meta.url));

interface Run {
  code: number;
  stderr: string;
  stdout: string;
}

async function runGenerate(args: string[], stdin?: string): Promise<Run> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", TASK, ...args],
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

async function tempFile(text: string): Promise<string> {
  const f = await Deno.makeTempFile({ prefix: "cluscomp-prompt-", suffix: ".txt" });
  await Deno.writeTextFile(f, text);
  return f;
}

const LONG = "In the beginning God created the heaven and the earth. ".repeat(40);

const cases: {
  name: string;
  args: () => string[] | Promise<string[]>;
  stdin?: string;
  needles: string[];
}[] = [
  {
    name: "empty --prompt",
    args: () => ["--model", KJV, "--prompt", ""],
    needles: ["--prompt"],
  },
  {
    name: "blank --prompt",
    args: () => ["--model", KJV, "--prompt", "  \n "],
    needles: ["--prompt", "empty"],
  },
  {
    name: "empty --prompt-file",
    args: async () => ["--model", KJV, "--prompt-file", await tempFile("")],
    needles: ["--prompt-file", "cluscomp-prompt-", "empty"],
  },
  {
    name: "empty stdin",
    args: () => ["--model", KJV, "--prompt-file", "-"],
    stdin: "",
    needles: ["--prompt-file", "stdin", "empty"],
  },
  {
    name: "missing --prompt-file",
    args: () => ["--model", KJV, "--prompt-file", "/nonexistent/prompt.txt"],
    needles: ["--prompt-file", "/nonexistent/prompt.txt"],
  },
  {
    name: "a prompt longer than max_position_embeddings",
    args: () => ["--model", KJV, "--prompt", LONG],
    needles: ["--prompt", "max_position_embeddings", "256"],
  },
  {
    name: "a prompt file longer than --context",
    args: async () => [
      "--model",
      KJV,
      "--prompt-file",
      await tempFile("In the beginning God created the heaven and the earth."),
      "--context",
      "4",
    ],
    needles: ["--context 4", "--prompt-file"],
  },
  {
    name: "--context above max_position_embeddings",
    args: () => ["--model", KJV, "--prompt", "In the", "--context", "1000"],
    needles: ["--context", "1000", "256"],
  },
  {
    name: "--context 0",
    args: () => ["--model", KJV, "--prompt", "In the", "--context", "0"],
    needles: ["--context"],
  },
  {
    name: "--max-new-tokens 0",
    args: () => ["--model", KJV, "--prompt", "In the", "--max-new-tokens", "0"],
    needles: ["--max-new-tokens", "0"],
  },
  {
    name: "negative --max-new-tokens",
    args: () => ["--model", KJV, "--prompt", "In the", "--max-new-tokens=-5"],
    needles: ["--max-new-tokens", "-5"],
  },
  {
    name: "negative --max-new-tokens as a separate argument",
    args: () => ["--model", KJV, "--prompt", "In the", "--max-new-tokens", "-5"],
    needles: ["max-new-tokens"],
  },
  {
    name: "non-integer --max-new-tokens",
    args: () => ["--model", KJV, "--prompt", "In the", "--max-new-tokens", "2.5"],
    needles: ["--max-new-tokens", "2.5"],
  },
  {
    name: "--top-p 0",
    args: () => ["--model", KJV, "--prompt", "In the", "--top-p", "0"],
    needles: ["--top-p"],
  },
  {
    name: "--top-p above 1",
    args: () => ["--model", KJV, "--prompt", "In the", "--top-p", "1.5"],
    needles: ["--top-p", "1.5"],
  },
  {
    name: "non-numeric --top-p",
    args: () => ["--model", KJV, "--prompt", "In the", "--top-p", "half"],
    needles: ["--top-p", "half"],
  },
  {
    name: "negative --temperature",
    args: () => ["--model", KJV, "--prompt", "In the", "--temperature=-0.5"],
    needles: ["--temperature", "-0.5"],
  },
  {
    name: "negative --top-k",
    args: () => ["--model", KJV, "--prompt", "In the", "--top-k=-1"],
    needles: ["--top-k"],
  },
  {
    name: "empty --stop",
    args: () => ["--model", KJV, "--prompt", "In the", "--stop", ""],
    needles: ["--stop"],
  },
  {
    name: "both --prompt and --prompt-file",
    args: async () => [
      "--model",
      KJV,
      "--prompt",
      "In the",
      "--prompt-file",
      await tempFile("beginning"),
    ],
    needles: ["--prompt", "--prompt-file"],
  },
  {
    name: "neither --prompt nor --prompt-file",
    args: () => ["--model", KJV],
    needles: ["--prompt", "--prompt-file"],
  },
  {
    name: "missing --model",
    args: () => ["--prompt", "In the"],
    needles: ["--model"],
  },
  {
    name: "a missing model folder",
    args: () => ["--model", "/nonexistent/model-dir", "--prompt", "In the"],
    needles: ["--model", "/nonexistent/model-dir"],
  },
  {
    name: "a model folder without tokenizer.json",
    args: async () => {
      const dir = await Deno.makeTempDir({ prefix: "cluscomp-notok-" });
      for (const f of ["config.json", "model.safetensors"]) {
        await Deno.copyFile(`${KJV}/${f}`, `${dir}/${f}`);
      }
      return ["--model", dir, "--prompt", "In the"];
    },
    needles: ["tokenizer.json"],
  },
  {
    name: "an unknown flag",
    args: () => ["--model", KJV, "--prompt", "In the", "--bogus", "1"],
    needles: ["bogus"],
  },
];

for (const c of cases) {
  Deno.test(`generate refuses ${c.name} with one clear line`, async () => {
    assertOneErrorLine(await runGenerate(await c.args(), c.stdin), ...c.needles);
  });
}

Deno.test("generate --json on kjv-llama prints one object with the documented fields", async () => {
  const r = await runGenerate([
    "--model",
    KJV,
    "--prompt",
    "In the beginning God",
    "--max-new-tokens",
    "4",
    "--json",
    "--quiet",
  ]);
  assert.equal(r.code, 0, r.stderr);
  const o = JSON.parse(r.stdout);
  const fields = [
    "text",
    "ids",
    "prompt_tokens",
    "generated_tokens",
    "ttft_ms",
    "tokens_per_s",
    "prefill_tokens_per_s",
    "stop_reason",
    "weight_bytes",
    "adapter",
  ];
  for (const k of fields) assert.ok(k in o, `missing ${k}`);
  assert.equal(typeof o.text, "string");
  assert.ok(o.generated_tokens >= 0 && o.generated_tokens <= 4, `${o.generated_tokens}`);
  assert.equal(o.ids.length, o.generated_tokens);
  assert.ok(o.prompt_tokens > 1, "BOS + prompt tokens");
  assert.ok(["eos", "length"].includes(o.stop_reason), o.stop_reason);
  assert.ok(o.weight_bytes > 0);
  assert.equal(r.stderr.split("\n").filter((l) => l.trim() && !l.includes("MESA")).length, 0);
});

Deno.test("generate streams the same text as --json, stdin prompt, greedy is repeatable, --stop cuts", async () => {
  const args = ["--model", KJV, "--max-new-tokens", "6", "--context", "64"];
  const [a, b] = await Promise.all([
    runGenerate([...args, "--prompt-file", "-"], "And God said\n"),
    runGenerate([...args, "--prompt", "And God said", "--json", "--quiet"]),
  ]);
  assert.equal(a.code, 0, a.stderr);
  assert.equal(b.code, 0, b.stderr);
  const o = JSON.parse(b.stdout);
  assert.equal(a.stdout, o.text + "\n");
  // the summary line on stderr
  assert.match(a.stderr, /prompt \+ \d+ generated tokens .*tok\/s/);
  // a stop string taken from the middle of that text: the output ends just before it
  const text: string = o.text;
  assert.ok(text.length >= 6, `greedy text too short for a stop test: ${JSON.stringify(text)}`);
  const stop = text.slice(3, 6);
  const c = await runGenerate([
    ...args,
    "--prompt",
    "And God said",
    "--stop",
    "never appears",
    "--stop",
    stop,
    "--json",
    "--quiet",
  ]);
  assert.equal(c.code, 0, c.stderr);
  const oc = JSON.parse(c.stdout);
  assert.equal(oc.text, text.slice(0, text.indexOf(stop)));
  assert.equal(oc.stop_reason, "stop");
  assert.deepEqual(oc.ids, o.ids.slice(0, oc.ids.length), "same greedy tokens up to the stop");
});
