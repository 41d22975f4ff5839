// The embedded model (no ../shared): a weights file changed past its first MiB is refused by name
// and leaves the old output alone, `--restart cluster` recomputes it, and a run SIGKILLed after a
// finished block is resumed at once by the next run (the lock dies with its process).
import assert from "node:assert/strict";
import { compressArgs, filesOf, runTask } from "./run.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const FIXTURE = `${ROOT}fixtures/kjv-llama`;
const FLAGS = ["--bits", "3", "--d", "2", "--iters", "3", "--no-finetune", "--json"];
const TENSOR = "model.layers.3.mlp.down_proj.weight";

async function copy(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true });
  for await (const e of Deno.readDir(from)) {
    if (e.isFile) await Deno.copyFile(`${from}/${e.name}`, `${to}/${e.name}`);
  }
}

/** Byte offset in the file of a tensor's data, from the safetensors header. */
async function dataOffset(file: string, tensor: string): Promise<number> {
  const f = await Deno.open(file);
  try {
    const len = new Uint8Array(8);
    await f.read(len);
    const n = Number(new DataView(len.buffer).getBigUint64(0, true));
    const head = new Uint8Array(n);
    let off = 0;
    while (off < n) off += (await f.read(head.subarray(off)))!;
    const header = JSON.parse(new TextDecoder().decode(head));
    return 8 + n + header[tensor].data_offsets[0];
  } finally {
    f.close();
  }
}

const errorLines = (stderr: string) => stderr.split("\n").filter((l) => l.startsWith("error"));
const resumedBlocks = (stderr: string) =>
  stderr.split("\n").filter((l) => l.includes('"stage":"cluster"') && l.includes('"resumed":"yes"'))
    .length;

Deno.test("a weights file changed past its first MiB is refused by name; --restart recomputes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-changed-" });
  const model = `${dir}/model`, out = `${dir}/out`;
  await copy(FIXTURE, model);
  const first = await runTask("compress", compressArgs(model, out, FLAGS));
  assert.equal(first.code, 0, first.stderr);
  const before = await filesOf(out);

  const file = `${model}/model.safetensors`;
  const at = await dataOffset(file, TENSOR);
  assert.ok(at > 1 << 20, `${TENSOR} starts at ${at}, inside the first MiB`);
  const bytes = await Deno.readFile(file);
  for (let i = 0; i < 16; i++) bytes[at + 100 + i] ^= 0x5a;
  await Deno.writeFile(file, bytes);

  const again = await runTask("compress", compressArgs(model, out, FLAGS));
  assert.equal(again.code, 1, again.stderr);
  const lines = errorLines(again.stderr);
  assert.equal(lines.length, 1, again.stderr);
  assert.match(
    lines[0],
    /^error: .*out\.work: input file model\.safetensors changed since this work directory was made; use --restart cluster .*or another --work$/,
  );
  assert.equal(resumedBlocks(again.stderr), 0);
  assert.deepEqual(await filesOf(out), before, "the old output is untouched");

  const restarted = await runTask(
    "compress",
    compressArgs(model, out, [...FLAGS, "--restart", "cluster"]),
  );
  assert.equal(restarted.code, 0, restarted.stderr);
  assert.equal(resumedBlocks(restarted.stderr), 0, "no block resumed after --restart cluster");
  assert.match(restarted.stderr, /"stage":"cluster","done":4,"total":4,"block":3,"elapsed_s"/);
  const after = await filesOf(out);
  const differs = [...after].filter(([name, b]) => {
    const a = before.get(name);
    return !name.startsWith("report") &&
      (!a || a.length !== b.length || a.some((x, i) => x !== b[i]));
  });
  assert.ok(differs.length > 0, "the output was recomputed from the changed weights");
  // And now the work directory belongs to the changed model: a rerun resumes every block.
  const resumed = await runTask("compress", compressArgs(model, out, FLAGS));
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.equal(resumedBlocks(resumed.stderr), 4);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a run SIGKILLed after a finished block is resumed at once by the next run", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-killed-" });
  const args = compressArgs(FIXTURE, `${dir}/out`, FLAGS);
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}tasks/compress.ts`, ...args],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let stderr = "", killed = false;
  const dec = new TextDecoder();
  for await (const chunk of child.stderr) {
    stderr += dec.decode(chunk, { stream: true });
    // Block 0 is written once block 1 reports progress.
    if (!killed && /"stage":"cluster","done":1,/.test(stderr)) {
      child.kill("SIGKILL");
      killed = true;
    }
  }
  const status = await child.status;
  assert.ok(killed, `never saw a finished block:\n${stderr}`);
  assert.equal(status.success, false);
  assert.equal(status.signal, "SIGKILL", "the kill landed before the run finished");

  const again = await runTask("compress", args);
  assert.equal(again.code, 0, again.stderr);
  assert.ok(resumedBlocks(again.stderr) >= 1, `block 0 should be resumed:\n${again.stderr}`);
  assert.ok(!again.stderr.includes('"block":0,"matrix"'), "block 0 must not be recomputed");
  await Deno.remove(dir, { recursive: true });
});
