// writeUpdatedFolder: a compressed folder rewritten with some tensors replaced (as whole-model
// finetuning does), everything else byte for byte, atomically, in place or to a new folder.
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import { openModel } from "../../src/format/open.ts";
import { STALE_REPORT_FILES, writeUpdatedFolder } from "../../src/format/update.ts";
import {
  bytesToF32,
  type Dtype,
  f32ToBf16Bytes,
  f32ToF16Bytes,
  SafetensorsIndex,
} from "../../src/io/safetensors.ts";
import { LoadedModel } from "../../src/pipeline/session.ts";
import { compressedFolder } from "../model/compressed_folder.ts";

const KJV = fileURLToPath(new URL("../../fixtures/kjv-llama", import.meta.url));

/** Every file under dir (relative path -> bytes). */
async function files(dir: string, rel = ""): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  for await (const e of Deno.readDir(join(dir, rel))) {
    const p = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory) { for (const [k, v] of await files(dir, p)) out.set(k, v); }
    else out.set(p, await Deno.readFile(join(dir, p)));
  }
  return out;
}

async function copyDir(src: string, dst: string): Promise<void> {
  await Deno.mkdir(dst, { recursive: true });
  for (const [p, bytes] of await files(src)) await Deno.writeFile(join(dst, p), bytes);
}

/** The f32 values `x` read back as after storing them in `dtype`. */
function stored(x: Float32Array, dtype: Dtype): Float32Array {
  if (dtype === "F32") return x.slice();
  return bytesToF32(dtype === "F16" ? f32ToF16Bytes(x) : f32ToBf16Bytes(x), dtype);
}

/** Known values: exact in f16 at even indices (k / 256), needing rounding at odd ones. */
function known(count: number, seed: number): Float32Array {
  const x = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    x[i] = i % 2 === 0 ? ((i * 7 + seed) % 512 - 256) / 256 : Math.sin(i * 0.37 + seed) * 0.9;
  }
  return x;
}

interface Case {
  src: string;
  replace: Map<string, Float32Array>;
  dtypes: Map<string, Dtype>;
}

async function makeCase(): Promise<Case> {
  const src = await compressedFolder(KJV);
  const index = await SafetensorsIndex.open(src);
  try {
    const names = [
      "model.layers.0.self_attn.q_proj.codebook",
      "model.layers.1.mlp.gate_proj.codebook",
      "model.layers.3.mlp.down_proj.codebook",
      "model.layers.2.input_layernorm.weight",
      "model.norm.weight",
    ];
    const replace = new Map<string, Float32Array>();
    const dtypes = new Map<string, Dtype>();
    names.forEach((name, k) => {
      const t = index.info(name);
      const count = t.shape.reduce((a, b) => a * b, 1);
      replace.set(name, known(count, k + 1));
      dtypes.set(name, t.dtype);
    });
    // Both 16-bit conversions are exercised: F16 codebooks, and BF16 norms in this fixture.
    assert.equal(dtypes.get("model.layers.0.self_attn.q_proj.codebook"), "F16");
    assert.ok([...dtypes.values()].some((d) => d !== "F16"), `dtypes ${[...dtypes.values()]}`);
    return { src, replace, dtypes };
  } finally {
    index.close();
  }
}

/** Checks `out` against `before` (the source's files) with the case's tensors replaced. */
async function checkUpdated(
  out: string,
  before: Map<string, Uint8Array>,
  c: Case,
  extra: Record<string, string>,
): Promise<void> {
  const after = await files(out);
  const srcIndexDir = await Deno.makeTempDir({ prefix: "cluscomp-upd-src-" });
  try {
    // The source's shards, as they were, for tensor-level comparison.
    for (const [p, bytes] of before) await Deno.writeFile(join(srcIndexDir, p), bytes);
    const a = await SafetensorsIndex.open(srcIndexDir);
    const b = await SafetensorsIndex.open(out);
    try {
      assert.deepEqual(b.names(), a.names());
      assert.deepEqual(b.metadata(), a.metadata());
      for (const name of a.names()) {
        const ta = a.info(name), tb = b.info(name);
        assert.equal(tb.dtype, ta.dtype, name);
        assert.deepEqual(tb.shape, ta.shape, name);
        const rep = c.replace.get(name);
        if (rep) {
          const got = await b.readF32(name);
          const want = stored(rep, ta.dtype);
          assert.deepEqual(got, want, `${name}: replaced values as stored ${ta.dtype}`);
          for (let i = 0; i < rep.length; i += 2) {
            if (ta.dtype === "F16") assert.equal(got[i], rep[i], `${name}[${i}] exact in f16`);
          }
          assert.notDeepEqual(await a.readRaw(name), await b.readRaw(name), name);
        } else {
          assert.deepEqual(await b.readRaw(name), await a.readRaw(name), `${name} byte-identical`);
        }
      }
    } finally {
      a.close();
      b.close();
    }
  } finally {
    await Deno.remove(srcIndexDir, { recursive: true });
  }
  for (const [p, bytes] of before) {
    if (STALE_REPORT_FILES.includes(p)) {
      assert.ok(!after.has(p) || p in extra, `stale ${p} left out`);
      continue;
    }
    assert.ok(after.has(p), `${p} copied`);
    if (p.endsWith(".safetensors")) {
      assert.equal(after.get(p)!.length, bytes.length, `${p} size`);
    } else {
      assert.deepEqual(after.get(p), bytes, `${p} byte-identical`);
    }
  }
  for (const [name, text] of Object.entries(extra)) {
    assert.equal(new TextDecoder().decode(after.get(name)), text, `extra ${name}`);
  }
  const expectedNames = new Set([...before.keys()].filter((p) => !STALE_REPORT_FILES.includes(p)));
  for (const name of Object.keys(extra)) expectedNames.add(name);
  assert.deepEqual(new Set(after.keys()), expectedNames, "no other file added or lost");
  for (const p of ["config.json", "tokenizer.json", "model.safetensors.index.json"]) {
    assert.ok(after.has(p), `${p} present`);
  }
}

/** Names in `dir` other than `keep` (left-over temp or old folders). */
async function leftovers(dir: string, keep: string[]): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) if (!keep.includes(e.name)) out.push(e.name);
  return out;
}

Deno.test("writeUpdatedFolder replaces codebooks and norms, keeps the rest byte for byte, and the folder runs", async () => {
  const c = await makeCase();
  const before = await files(c.src);
  const parent = await Deno.makeTempDir({ prefix: "cluscomp-upd-" });
  const out = join(parent, "out");
  const extra = { "report.json": '{"whole_model_finetune":true}\n' };
  await writeUpdatedFolder(c.src, out, c.replace, extra);
  assert.deepEqual(await leftovers(parent, ["out"]), []);
  assert.deepEqual(await files(c.src), before, "the source is untouched");
  await checkUpdated(out, before, c, extra);

  // Through the folder reader: the codebook the kernels get is the replaced one.
  const m = await openModel(out);
  try {
    const cb = await m.source.codebook!(0, "q");
    assert.ok(cb);
    assert.deepEqual(
      cb.centroids,
      stored(c.replace.get("model.layers.0.self_attn.q_proj.codebook")!, "F16"),
    );
  } finally {
    m.index.close();
  }

  // It loads and generates.
  const run = async (dir: string) => {
    const lm = await LoadedModel.load(dir);
    try {
      assert.equal(lm.compressed, true);
      return await lm.generate("In the beginning God", { maxNewTokens: 8 });
    } finally {
      lm.release();
    }
  };
  const got = await run(out);
  assert.ok(got.ids.length >= 1 && got.ids.length <= 8);
  // Same folder with the source's own values put back: the same text as the source.
  const index = await SafetensorsIndex.open(c.src);
  const back = new Map<string, Float32Array>();
  try {
    for (const name of c.replace.keys()) back.set(name, await index.readF32(name));
  } finally {
    index.close();
  }
  await writeUpdatedFolder(out, out, back);
  const restored = await files(out);
  for (const [p, bytes] of before) {
    if (!STALE_REPORT_FILES.includes(p)) assert.deepEqual(restored.get(p), bytes, p);
  }
  assert.deepEqual((await run(out)).ids, (await run(c.src)).ids);
  await Deno.remove(parent, { recursive: true });
});

Deno.test("writeUpdatedFolder updates a folder in place atomically", async () => {
  const c = await makeCase();
  const parent = await Deno.makeTempDir({ prefix: "cluscomp-upd-inplace-" });
  const dir = join(parent, "model");
  await copyDir(c.src, dir);
  const before = await files(dir);
  await writeUpdatedFolder(dir, dir, c.replace, { "notes.txt": "updated" });
  assert.deepEqual(await leftovers(parent, ["model"]), [], "no temp or old folder left");
  await checkUpdated(dir, before, c, { "notes.txt": "updated" });
  // An empty update copies everything, the report included.
  const again = await files(dir);
  await writeUpdatedFolder(dir, dir, new Map());
  assert.deepEqual(await files(dir), again);
  await Deno.remove(parent, { recursive: true });
});

Deno.test("writeUpdatedFolder replaces an existing output folder whole", async () => {
  const c = await makeCase();
  const parent = await Deno.makeTempDir({ prefix: "cluscomp-upd-over-" });
  const out = join(parent, "out");
  await Deno.mkdir(out);
  await Deno.writeTextFile(join(out, "stale.txt"), "from an earlier run");
  const before = await files(c.src);
  await writeUpdatedFolder(c.src, out, c.replace);
  assert.deepEqual(await leftovers(parent, ["out"]), []);
  await checkUpdated(out, before, c, {});
  await Deno.remove(parent, { recursive: true });
});

Deno.test("writeUpdatedFolder rejects an unknown tensor or a wrong size and writes nothing", async () => {
  const c = await makeCase();
  const parent = await Deno.makeTempDir({ prefix: "cluscomp-upd-err-" });
  const absent = join(parent, "absent");
  const existing = join(parent, "existing");
  await Deno.mkdir(existing);
  await Deno.writeTextFile(join(existing, "keep.txt"), "old");

  const unknown = new Map(c.replace);
  unknown.set("model.layers.9.self_attn.q_proj.codebook", new Float32Array(4));
  const cb = "model.layers.1.mlp.gate_proj.codebook";
  const wrong = new Map(c.replace);
  const size = c.replace.get(cb)!.length;
  wrong.set(cb, new Float32Array(size - 1));
  const codes = new Map([["model.layers.0.self_attn.q_proj.codes", new Float32Array(1)]]);

  for (const out of [absent, existing, c.src]) {
    const was = out === absent ? null : await files(out);
    await assert.rejects(
      writeUpdatedFolder(c.src, out, unknown),
      (e: Error) => e.message.includes('"model.layers.9.self_attn.q_proj.codebook"'),
    );
    await assert.rejects(
      writeUpdatedFolder(c.src, out, wrong),
      (e: Error) =>
        e.message.includes(`"${cb}"`) && e.message.includes(String(size)) &&
        e.message.includes(String(size - 1)),
    );
    await assert.rejects(
      writeUpdatedFolder(c.src, out, codes),
      (e: Error) => e.message.includes('"model.layers.0.self_attn.q_proj.codes"'),
    );
    if (out !== absent) assert.deepEqual(await files(out), was, `${out} unchanged`);
  }
  assert.ok(!existsDir(absent), "no output folder made");
  assert.deepEqual(await leftovers(parent, ["existing"]), [], "no temp folder left");
  await Deno.remove(parent, { recursive: true });
});

function existsDir(p: string): boolean {
  try {
    return Deno.statSync(p).isDirectory;
  } catch {
    return false;
  }
}
