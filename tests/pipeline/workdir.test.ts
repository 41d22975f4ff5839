// The work directory on its own (no ../shared): restart, a corrupt manifest, the OS lock (stale,
// same process, child process) and the input hashes (changed file refused, touched file accepted).
import assert from "node:assert/strict";
import { hostname } from "node:os";
import { encode } from "@msgpack/msgpack";
import { UserError } from "../../src/errors.ts";
import { inputsHash } from "../../src/pipeline/compress.ts";
import { WorkDir } from "../../src/io/workdir.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const STAGES = { cluster: { iters: 3 }, finetune: { epochs: 1 }, eval: null };
const INPUTS = { "config.json": "a".repeat(64), "model.safetensors": "b".repeat(64) };
const bytes = (s: string) => new TextEncoder().encode(s);

/** The one-line UserError that `p` rejects with. */
async function userError(p: Promise<unknown>): Promise<string> {
  const e = await p.then(() => null, (e) => e);
  assert.ok(e instanceof UserError, `expected a UserError, got ${e}`);
  assert.ok(!e.message.includes("\n"), `one line: ${e.message}`);
  return e.message;
}

async function filled(dir: string): Promise<void> {
  const w = await WorkDir.open(dir, STAGES, INPUTS);
  await w.complete("cluster/block-000", "cluster/block-000.bin", bytes("c0"), { facts: [] });
  await w.complete("finetune/block-000", "finetune/block-000.bin", bytes("f0"));
  await w.complete("eval/original", "eval/original.json", bytes("{}"));
  await w.close();
}

Deno.test("restart of a stage drops that stage's units and later ones, keeps earlier ones", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-wd-" });
  await filled(dir);
  let w = await WorkDir.open(dir, STAGES, INPUTS);
  assert.deepEqual(Object.keys(w.units()).sort(), [
    "cluster/block-000",
    "eval/original",
    "finetune/block-000",
  ]);
  assert.deepEqual(await w.read("cluster/block-000"), bytes("c0"));
  await w.close();
  w = await WorkDir.open(dir, STAGES, INPUTS, "finetune");
  assert.deepEqual(Object.keys(w.units()), ["cluster/block-000"]);
  assert.ok(await w.done("cluster/block-000"));
  assert.equal(await w.done("finetune/block-000"), null);
  await w.close();
  // A changed setting of a later stage needs a restart from it.
  const msg = await userError(WorkDir.open(dir, { ...STAGES, finetune: { epochs: 2 } }, INPUTS));
  assert.match(msg, /the finetune settings changed .*--restart finetune/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a flipped byte in a unit makes it not done", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-wd-" });
  await filled(dir);
  await Deno.writeFile(`${dir}/cluster/block-000.bin`, bytes("cX"));
  const w = await WorkDir.open(dir, STAGES, INPUTS);
  assert.equal(await w.done("cluster/block-000"), null);
  assert.ok(await w.done("finetune/block-000"));
  await w.close();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a corrupt manifest is one clear error naming the file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-wd-" });
  const path = `${dir}/manifest.msgpack`;
  const corrupt = new RegExp(
    `^${path}: manifest is corrupt \\(.*\\); delete the work directory to start over$`,
  );
  await Deno.writeFile(path, new Uint8Array([0xc1, 0xff, 0x00, 0x13, 0x37]));
  assert.match(await userError(WorkDir.open(dir, STAGES, INPUTS)), corrupt);
  // Well-formed msgpack, wrong field types.
  const wrong = [
    { version: 2, stages: {}, inputs: INPUTS, units: { u: { file: 5, sha256: "x", bytes: "1" } } },
    { version: 2, stages: [], inputs: "abc", units: {} },
    {
      version: 2,
      stages: {},
      inputs: INPUTS,
      units: { u: { file: "../x", sha256: "a".repeat(64), bytes: 1 } },
    },
    { version: 7 },
    "just a string",
  ];
  for (const m of wrong) {
    await Deno.writeFile(path, encode(m));
    assert.match(await userError(WorkDir.open(dir, STAGES, INPUTS)), corrupt);
  }
  // The lock was released after each refusal.
  await Deno.remove(path);
  await (await WorkDir.open(dir, STAGES, INPUTS)).close();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a stale lock file left by a dead process does not block", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-wd-" });
  await Deno.writeTextFile(`${dir}/lock`, JSON.stringify({ pid: 999_999_999, host: hostname() }));
  const w = await WorkDir.open(dir, STAGES, INPUTS);
  await w.close();
  // Another host's pid is no hint either: only a held OS lock refuses.
  await Deno.writeTextFile(`${dir}/lock`, JSON.stringify({ pid: 1, host: "elsewhere" }));
  await (await WorkDir.open(dir, STAGES, INPUTS)).close();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a live lock is refused: same process, then a child process until it is killed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-wd-" });
  const w = await WorkDir.open(dir, STAGES, INPUTS);
  const msg = await userError(WorkDir.open(dir, STAGES, INPUTS));
  assert.equal(
    msg,
    `${dir} is in use by process ${Deno.pid} on ${hostname()}; wait for it to finish`,
  );
  await w.close();
  await (await WorkDir.open(dir, STAGES, INPUTS)).close();

  const script = `${dir}/hold.ts`;
  await Deno.writeTextFile(
    script,
    `import { WorkDir } from "${ROOT}src/io/workdir.ts";
await WorkDir.open(${JSON.stringify(dir)}, ${JSON.stringify(STAGES)}, ${JSON.stringify(INPUTS)});
console.log("locked");
await new Promise(() => setInterval(() => {}, 1000));
`,
  );
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--config", `${ROOT}deno.json`, script],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.getReader();
  let seen = "";
  while (!seen.includes("locked")) {
    const { value, done } = await reader.read();
    assert.ok(!done, "the child exited before taking the lock");
    seen += new TextDecoder().decode(value);
  }
  const held = await userError(WorkDir.open(dir, STAGES, INPUTS));
  assert.match(held, new RegExp(`is in use by process ${child.pid} on `));
  child.kill("SIGKILL");
  // Taken as soon as the kill lands (the kernel drops the lock with the process, whether or not it
  // is reaped yet): retried until the signal is delivered, 5 s at most.
  let after: WorkDir | null = null;
  for (let i = 0; i < 100 && !after; i++) {
    after = await WorkDir.open(dir, STAGES, INPUTS).catch(() => null);
    if (!after) await new Promise((r) => setTimeout(r, 50));
  }
  assert.ok(after, "the lock of a killed process was not released");
  await after.close();
  const status = await child.status;
  assert.equal(status.signal, "SIGKILL");
  reader.releaseLock();
  await child.stdout.cancel();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("changed input is refused naming the file; a touched, unchanged one is accepted", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-wd-" });
  const model = `${dir}/model`, work = `${dir}/work`;
  await Deno.mkdir(model);
  await Deno.writeTextFile(`${model}/config.json`, "{}");
  await Deno.writeTextFile(`${model}/tokenizer.json`, "{}");
  const weights = new Uint8Array(3 << 20).map((_, i) => i * 7);
  await Deno.writeFile(`${model}/model-00001.safetensors`, weights);
  await Deno.writeFile(`${model}/model-00002.safetensors`, weights);
  const files = [`${model}/model-00001.safetensors`, `${model}/model-00002.safetensors`];
  const first = await inputsHash(model, files, work);
  assert.deepEqual(Object.keys(first.files).sort(), [
    "config.json",
    "model-00001.safetensors",
    "model-00002.safetensors",
    "tokenizer.json",
  ]);
  await (await WorkDir.open(work, STAGES, first.files)).close();

  // Same size, a byte past the first MiB, mtime moved: the file is hashed again.
  const changed = weights.slice();
  changed[(2 << 20) + 5] ^= 1;
  await Deno.writeFile(`${model}/model-00002.safetensors`, changed);
  await Deno.utime(`${model}/model-00002.safetensors`, 1, 1_000_000);
  const second = await inputsHash(model, files, work);
  assert.notEqual(second.hash, first.hash);
  const msg = await userError(WorkDir.open(work, STAGES, second.files));
  assert.equal(
    msg,
    `${work}: input file model-00002.safetensors changed since this work directory was made; use --restart cluster to recompute from the start, or another --work`,
  );
  // --restart of the first stage accepts it and drops every unit.
  await (await WorkDir.open(work, STAGES, second.files, "cluster")).close();

  // Back to the original bytes, with a new mtime: re-hashed (the cache is keyed by mtime) and
  // accepted against a manifest made from the original.
  await Deno.writeFile(`${model}/model-00002.safetensors`, weights);
  await Deno.utime(`${model}/model-00002.safetensors`, 2, 2_000_000);
  const cache = JSON.parse(await Deno.readTextFile(`${work}/input-hashes.json`));
  const third = await inputsHash(model, files, work);
  assert.deepEqual(third, first);
  const cache2 = JSON.parse(await Deno.readTextFile(`${work}/input-hashes.json`));
  const key = `${model}/model-00002.safetensors`;
  assert.notEqual(cache2.files[key].mtimeMs, cache.files[key].mtimeMs, "re-hashed on new mtime");
  assert.equal(cache2.files[key].mtimeMs, 2_000_000_000);
  await Deno.remove(`${work}/manifest.msgpack`);
  await (await WorkDir.open(work, STAGES, first.files)).close();
  await (await WorkDir.open(work, STAGES, third.files)).close();

  // A corrupt hash cache is ignored.
  await Deno.writeTextFile(`${work}/input-hashes.json`, '{"version":1,"files":{"x":3}}');
  assert.deepEqual(await inputsHash(model, files, work), first);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a manifest of version 1 (first-MiB input hash) needs a restart", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-wd-" });
  const path = `${dir}/manifest.msgpack`;
  await Deno.writeFile(path, encode({ version: 1, stages: STAGES, inputs: "ab", units: {} }));
  assert.equal(
    await userError(WorkDir.open(dir, STAGES, INPUTS)),
    `${path}: made by an older cluscomp that did not hash whole input files; use --restart cluster or another --work`,
  );
  const w = await WorkDir.open(dir, STAGES, INPUTS, "cluster");
  assert.deepEqual(w.units(), {});
  await w.close();
  await (await WorkDir.open(dir, STAGES, INPUTS)).close();
  await Deno.remove(dir, { recursive: true });
});
