import assert from "node:assert/strict";
import { join } from "node:path";
import { UserError } from "../../src/errors.ts";
import {
  bytesToF32,
  type Dtype,
  f32ToBf16Bytes,
  f32ToF16Bytes,
  SafetensorsIndex,
  writeSafetensors,
} from "../../src/io/safetensors.ts";
import { checkTensors, loadConfig } from "../../src/io/config.ts";
import { HAS_SHARED, STORIES, TINYLLAMA } from "../shared.ts";
import { randomF32 } from "../util.ts";

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-st-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Writes a raw safetensors file from a header object (or raw header text) and data bytes. */
function writeRaw(path: string, header: unknown, data: Uint8Array, lenOverride?: bigint): void {
  const json = new TextEncoder().encode(
    typeof header === "string" ? header : JSON.stringify(header),
  );
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lenOverride ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  Deno.writeFileSync(path, out);
}

function randomBytes(n: number, seed: number): Uint8Array {
  return Uint8Array.from(randomF32(n, seed, 0, 256), Math.floor);
}

/** Asserts `fn` rejects with a UserError whose message contains every string in `parts`. */
async function rejectsUser(fn: () => Promise<unknown>, ...parts: string[]): Promise<string> {
  let msg = "";
  await assert.rejects(fn, (e: unknown) => {
    assert.ok(e instanceof UserError, `expected UserError, got ${e}`);
    msg = e.message;
    for (const p of parts) assert.ok(msg.includes(p), `"${msg}" lacks "${p}"`);
    assert.ok(!msg.includes("\n"), `message is not one line: ${msg}`);
    return true;
  });
  return msg;
}

const SIZES: Record<Dtype, number> = { F32: 4, F16: 2, BF16: 2, U8: 1, U16: 2, I32: 4, U32: 4 };

Deno.test("round trip of every dtype keeps bytes, shapes and order", async () => {
  await withTempDir(async (dir) => {
    const dtypes = Object.keys(SIZES) as Dtype[];
    const tensors = dtypes.map((dtype, i) => ({
      name: `t.${dtype}`,
      dtype,
      shape: [3, i + 1],
      data: randomBytes(3 * (i + 1) * SIZES[dtype], i + 1),
    }));
    tensors.push({ name: "empty", dtype: "F32", shape: [0, 4], data: new Uint8Array(0) });
    await writeSafetensors(join(dir, "model.safetensors"), tensors, { format: "pt" });
    const idx = await SafetensorsIndex.open(dir);
    try {
      assert.deepEqual(idx.names(), tensors.map((t) => t.name));
      assert.deepEqual(idx.metadata(), { format: "pt" });
      for (const t of tensors) {
        const info = idx.info(t.name);
        assert.equal(info.dtype, t.dtype);
        assert.deepEqual(info.shape, t.shape);
        assert.equal(info.nbytes, t.data.length);
        assert.deepEqual(await idx.readRaw(t.name), t.data);
      }
    } finally {
      idx.close();
    }
  });
});

Deno.test("readF32 converts F32, F16 and BF16 exactly", async () => {
  await withTempDir(async (dir) => {
    const x = randomF32(64, 7, -4, 4);
    x[0] = 1e-7; // f16 subnormal range
    x[1] = 70000; // f16 overflow
    x[2] = -0;
    const bf = f32ToBf16Bytes(x), hf = f32ToF16Bytes(x);
    const f32 = new Uint8Array(x.buffer.slice(0));
    await writeSafetensors(join(dir, "m.safetensors"), [
      { name: "a", dtype: "F32", shape: [8, 8], data: f32 },
      { name: "b", dtype: "BF16", shape: [8, 8], data: bf },
      { name: "c", dtype: "F16", shape: [8, 8], data: hf },
      { name: "u", dtype: "U8", shape: [2], data: new Uint8Array(2) },
    ]);
    const idx = await SafetensorsIndex.open(dir);
    try {
      assert.deepEqual(await idx.readF32("a"), x);
      const b = await idx.readF32("b");
      const c = await idx.readF32("c");
      assert.deepEqual(b, bytesToF32(bf, "BF16"));
      assert.deepEqual(c, bytesToF32(hf, "F16"));
      assert.equal(c[1], Infinity);
      assert.ok(Object.is(c[2], -0) && Object.is(b[2], -0));
      for (let i = 3; i < 64; i++) {
        assert.ok(Math.abs(b[i] - x[i]) <= Math.abs(x[i]) * 2 ** -8, `bf16 [${i}]`);
        assert.ok(Math.abs(c[i] - x[i]) <= Math.abs(x[i]) * 2 ** -11, `f16 [${i}]`);
      }
      await rejectsUser(() => idx.readF32("u"), "u", "U8");
    } finally {
      idx.close();
    }
  });
});

Deno.test("bf16 and f16 bit patterns survive f32 and back", () => {
  const bits = new Uint16Array(65536).map((_, i) => i);
  const raw = new Uint8Array(bits.buffer);
  for (const dtype of ["BF16", "F16"] as const) {
    const f = bytesToF32(raw, dtype);
    const back = new Uint16Array(
      (dtype === "BF16" ? f32ToBf16Bytes(f) : f32ToF16Bytes(f)).buffer,
    );
    for (let i = 0; i < 65536; i++) {
      if (Number.isNaN(f[i])) {
        assert.ok(Number.isNaN(bytesToF32(new Uint8Array(back.buffer, 2 * i, 2), dtype)[0]));
      } else {
        assert.equal(back[i], i, `${dtype} pattern 0x${i.toString(16)}`);
      }
    }
  }
  // bf16 is the high half of the f32 bits.
  assert.deepEqual(bytesToF32(new Uint8Array([0x80, 0x3f]), "BF16"), new Float32Array([1]));
  // f16 specials.
  const sp = bytesToF32(new Uint8Array([1, 0, 0, 0x7c, 0, 0xfc, 1, 0x7c]), "F16");
  assert.equal(sp[0], 2 ** -24);
  assert.equal(sp[1], Infinity);
  assert.equal(sp[2], -Infinity);
  assert.ok(Number.isNaN(sp[3]));
});

Deno.test("f32 to bf16 and f16 round to nearest even", () => {
  const u16 = (b: Uint8Array) => Array.from(new Uint16Array(b.buffer));
  // 1 + 2^-8 is a bf16 tie: rounds down to 1 (even); 1 + 3*2^-8 rounds up.
  const x = new Float32Array([1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20]);
  assert.deepEqual(u16(f32ToBf16Bytes(x)), [0x3f80, 0x3f82, 0x3f81]);
  // f16: ties at 1 + 2^-11, half the smallest subnormal (2^-25) rounds to 0, overflow to inf.
  const y = new Float32Array([
    1 + 2 ** -11,
    1 + 3 * 2 ** -11,
    2 ** -25,
    2 ** -25 * 1.5,
    65520,
    NaN,
  ]);
  const h = u16(f32ToF16Bytes(y));
  assert.deepEqual(h.slice(0, 5), [0x3c00, 0x3c02, 0x0000, 0x0001, 0x7c00]);
  assert.equal(h[5] & 0x7c00, 0x7c00);
  assert.notEqual(h[5] & 0x3ff, 0);
  // Against the platform's Math.f16round where it exists.
  const f16round = (Math as unknown as { f16round?: (v: number) => number }).f16round;
  if (f16round) {
    const z = randomF32(20000, 3, -1, 1).map((v, i) => v * 2 ** ((i % 40) - 28));
    const got = bytesToF32(f32ToF16Bytes(z), "F16");
    for (let i = 0; i < z.length; i++) assert.equal(got[i], f16round(z[i]), `value ${z[i]}`);
  }
});

Deno.test("readRows reads only the requested rows of a 2-D tensor", async () => {
  await withTempDir(async (dir) => {
    const x = randomF32(10 * 6, 11);
    await writeSafetensors(join(dir, "m.safetensors"), [
      { name: "w", dtype: "BF16", shape: [10, 6], data: f32ToBf16Bytes(x) },
      { name: "v", dtype: "F32", shape: [10], data: new Uint8Array(x.buffer, 0, 40) },
    ]);
    const idx = await SafetensorsIndex.open(dir);
    try {
      const all = await idx.readF32("w");
      assert.deepEqual(await idx.readRows("w", 3, 4), all.slice(18, 42));
      assert.deepEqual(await idx.readRows("w", 9, 1), all.slice(54, 60));
      await rejectsUser(() => idx.readRows("w", 8, 3), "w", "out of range");
      await rejectsUser(() => idx.readRows("v", 0, 1), "v", "not 2-D");
    } finally {
      idx.close();
    }
  });
});

Deno.test("concurrent reads of one file return the right tensors", async () => {
  await withTempDir(async (dir) => {
    const tensors = Array.from({ length: 12 }, (_, i) => ({
      name: `t${i}`,
      dtype: "U8" as Dtype,
      shape: [1000 + i],
      data: randomBytes(1000 + i, 100 + i),
    }));
    await writeSafetensors(join(dir, "m.safetensors"), tensors);
    const idx = await SafetensorsIndex.open(dir);
    try {
      const got = await Promise.all(tensors.map((t) => idx.readRaw(t.name)));
      tensors.forEach((t, i) => assert.deepEqual(got[i], t.data));
      idx.close();
      assert.deepEqual(await idx.readRaw("t5"), tensors[5].data); // reopens after close
    } finally {
      idx.close();
    }
  });
});

Deno.test("sharded index reads tensors from every shard", async () => {
  await withTempDir(async (dir) => {
    const a = randomF32(4, 1), b = randomF32(6, 2);
    await writeSafetensors(join(dir, "model-00001-of-00002.safetensors"), [
      { name: "a", dtype: "F32", shape: [4], data: new Uint8Array(a.buffer) },
    ]);
    await writeSafetensors(join(dir, "model-00002-of-00002.safetensors"), [
      { name: "b", dtype: "F32", shape: [2, 3], data: new Uint8Array(b.buffer) },
    ]);
    // A stray file the index does not name is ignored.
    await writeSafetensors(join(dir, "stray.safetensors"), [
      { name: "a", dtype: "U8", shape: [1], data: new Uint8Array(1) },
    ]);
    Deno.writeTextFileSync(
      join(dir, "model.safetensors.index.json"),
      JSON.stringify({
        metadata: { total_size: 40 },
        weight_map: {
          a: "model-00001-of-00002.safetensors",
          b: "model-00002-of-00002.safetensors",
        },
      }),
    );
    const idx = await SafetensorsIndex.open(dir);
    try {
      assert.deepEqual(idx.names().sort(), ["a", "b"]);
      assert.ok(idx.info("b").file.endsWith("model-00002-of-00002.safetensors"));
      assert.deepEqual(await idx.readF32("a"), a);
      assert.deepEqual(await idx.readF32("b"), b);
      assert.ok(idx.has("a") && !idx.has("c"));
      assert.throws(() => idx.info("c"), (e: unknown) => {
        assert.ok(e instanceof UserError);
        assert.equal(e.message, `${dir}: tensor "c" not found`);
        return true;
      });
    } finally {
      idx.close();
    }
  });
});

Deno.test("sharded index naming a missing shard is refused", async () => {
  await withTempDir(async (dir) => {
    await writeSafetensors(join(dir, "s1.safetensors"), [
      { name: "a", dtype: "U8", shape: [1], data: new Uint8Array(1) },
    ]);
    Deno.writeTextFileSync(
      join(dir, "model.safetensors.index.json"),
      JSON.stringify({ weight_map: { a: "s1.safetensors", b: "s2.safetensors" } }),
    );
    await rejectsUser(
      () => SafetensorsIndex.open(dir),
      "model.safetensors.index.json",
      "s2.safetensors",
      "missing",
    );
  });
});

Deno.test("sharded index naming a tensor its shard lacks is refused", async () => {
  await withTempDir(async (dir) => {
    await writeSafetensors(join(dir, "s1.safetensors"), [
      { name: "a", dtype: "U8", shape: [1], data: new Uint8Array(1) },
    ]);
    Deno.writeTextFileSync(
      join(dir, "model.safetensors.index.json"),
      JSON.stringify({ weight_map: { a: "s1.safetensors", b: "s1.safetensors" } }),
    );
    await rejectsUser(() => SafetensorsIndex.open(dir), "index.json", `"b"`, "s1.safetensors");
  });
});

Deno.test("a tensor in two shards is refused", async () => {
  await withTempDir(async (dir) => {
    for (const f of ["s1.safetensors", "s2.safetensors"]) {
      await writeSafetensors(join(dir, f), [
        { name: "a", dtype: "U8", shape: [1], data: new Uint8Array(1) },
      ]);
    }
    await rejectsUser(() => SafetensorsIndex.open(dir), "s2.safetensors", `"a"`, "s1.safetensors");
  });
});

Deno.test("bad index.json is refused naming the index", async () => {
  await withTempDir(async (dir) => {
    Deno.writeTextFileSync(join(dir, "model.safetensors.index.json"), "{not json");
    await rejectsUser(() => SafetensorsIndex.open(dir), "model.safetensors.index.json", "JSON");
    Deno.writeTextFileSync(join(dir, "model.safetensors.index.json"), "{}");
    await rejectsUser(() => SafetensorsIndex.open(dir), "index.json", "weight_map");
  });
});

Deno.test("folder without safetensors files is refused", async () => {
  await withTempDir(async (dir) => {
    await rejectsUser(() => SafetensorsIndex.open(dir), dir, "no *.safetensors");
    await rejectsUser(() => SafetensorsIndex.open(join(dir, "nope")), "nope", "no such directory");
  });
});

// Each malformed file: [description, header, data length, expected message parts].
const u8 = (n: number) => new Uint8Array(n);
const BAD: [string, unknown, number, string[]][] = [
  [
    "overlapping offsets",
    {
      a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
      b: { dtype: "F32", shape: [2], data_offsets: [4, 12] },
    },
    12,
    ["overlapping", `"a"`, `"b"`],
  ],
  [
    "offsets past the data section",
    { a: { dtype: "F32", shape: [4], data_offsets: [0, 16] } },
    12,
    ["a", "end 16 exceeds data section size 12"],
  ],
  [
    "unsupported dtype",
    { w: { dtype: "F64", shape: [1], data_offsets: [0, 8] } },
    8,
    [`"w"`, "F64", "unsupported dtype"],
  ],
  ["invalid JSON", '{"a": {', 0, ["not valid JSON"]],
  ["header that is not an object", "[1, 2]", 0, ["not a JSON object"]],
  [
    "byte count that does not match the shape",
    { a: { dtype: "F32", shape: [3], data_offsets: [0, 8] } },
    8,
    [`"a"`, "8 bytes", "needs 12"],
  ],
  [
    "non-integer data_offsets",
    { a: { dtype: "U8", shape: [1], data_offsets: [0.5, 1.5] } },
    2,
    [`"a"`, "data_offsets"],
  ],
  [
    "data_offsets that are not a pair",
    { a: { dtype: "U8", shape: [1], data_offsets: [0] } },
    2,
    [`"a"`, "data_offsets"],
  ],
  [
    "negative shape",
    { a: { dtype: "U8", shape: [-1], data_offsets: [0, 1] } },
    1,
    [`"a"`, "shape"],
  ],
  [
    "non-string metadata",
    { __metadata__: { n: 1 }, a: { dtype: "U8", shape: [1], data_offsets: [0, 1] } },
    1,
    ["__metadata__"],
  ],
];

for (const [what, header, dataLen, parts] of BAD) {
  Deno.test(`safetensors with ${what} is refused naming the file`, async () => {
    await withTempDir(async (dir) => {
      const file = join(dir, "model.safetensors");
      writeRaw(file, header, u8(dataLen));
      const msg = await rejectsUser(() => SafetensorsIndex.open(dir), ...parts);
      assert.ok(msg.startsWith(`Cannot read ${file}: `), msg);
    });
  });
}

Deno.test("header length larger than the file is refused", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "model.safetensors");
    writeRaw(file, { a: { dtype: "U8", shape: [1], data_offsets: [0, 1] } }, u8(1), 4294967296n);
    const size = Deno.statSync(file).size;
    const msg = await rejectsUser(() => SafetensorsIndex.open(dir));
    assert.equal(msg, `Cannot read ${file}: header length 4294967296 exceeds file size ${size}`);
  });
});

Deno.test("truncated files are refused", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "model.safetensors");
    Deno.writeFileSync(file, u8(5));
    await rejectsUser(() => SafetensorsIndex.open(dir), file, "5 bytes");
    // A whole file cut short inside its data.
    await writeSafetensors(file, [{ name: "w", dtype: "F32", shape: [16], data: u8(64) }]);
    const bytes = Deno.readFileSync(file);
    Deno.writeFileSync(file, bytes.subarray(0, bytes.length - 10));
    await rejectsUser(() => SafetensorsIndex.open(dir), file, `"w"`, "exceeds data section");
    // Cut inside the header.
    Deno.writeFileSync(file, bytes.subarray(0, 20));
    await rejectsUser(() => SafetensorsIndex.open(dir), file, "exceeds file size 20");
  });
});

Deno.test("repeated writes of the same tensors are byte-identical and padded to 8", async () => {
  await withTempDir(async (dir) => {
    const tensors = [
      { name: "z", dtype: "F16" as Dtype, shape: [3], data: randomBytes(6, 1) },
      { name: "1", dtype: "U8" as Dtype, shape: [5], data: randomBytes(5, 2) },
      { name: "a", dtype: "I32" as Dtype, shape: [2, 2], data: randomBytes(16, 3) },
    ];
    const meta = { b: "2", a: "1" };
    await writeSafetensors(join(dir, "x.safetensors"), tensors, meta);
    await writeSafetensors(join(dir, "y.safetensors"), tensors, meta);
    const x = Deno.readFileSync(join(dir, "x.safetensors"));
    assert.deepEqual(Deno.readFileSync(join(dir, "y.safetensors")), x);
    const len = Number(new DataView(x.buffer).getBigUint64(0, true));
    assert.equal(len % 8, 0);
    const header = new TextDecoder().decode(x.subarray(8, 8 + len));
    assert.ok(header.startsWith(`{"__metadata__":{"b":"2","a":"1"},"z":`), header);
    assert.match(header, /^\{.*\} {0,7}$/);
    assert.equal(x.length, 8 + len + 6 + 5 + 16);
  });
});

Deno.test("atomic write replaces the file and leaves no temp file", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "m.safetensors");
    await writeSafetensors(path, [{ name: "a", dtype: "U8", shape: [1], data: u8(1) }]);
    await writeSafetensors(path, [{ name: "b", dtype: "U8", shape: [2], data: u8(2) }]);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["m.safetensors"]);
    const idx = await SafetensorsIndex.open(dir);
    assert.deepEqual(idx.names(), ["b"]);
    idx.close();
    // A refused write leaves the old file in place and no temp file.
    await rejectsUser(
      () => writeSafetensors(path, [{ name: "c", dtype: "F32", shape: [2], data: u8(3) }]),
      "c",
      "3 bytes",
    );
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["m.safetensors"]);
    const again = await SafetensorsIndex.open(dir);
    assert.deepEqual(again.names(), ["b"]);
    again.close();
  });
});

Deno.test({
  name: "stories260K fixture has 47 F32 tensors and passes checkTensors",
  ignore: !HAS_SHARED,
  fn: async () => {
    const idx = await SafetensorsIndex.open(STORIES);
    try {
      const names = idx.names();
      assert.equal(names.length, 47);
      for (const n of names) assert.equal(idx.info(n).dtype, "F32");
      const cfg = await loadConfig(STORIES);
      checkTensors(cfg, idx);
      const emb = await idx.readF32("model.embed_tokens.weight");
      assert.equal(emb.length, 512 * 64);
      assert.ok(emb.every(Number.isFinite));
      assert.deepEqual(
        await idx.readRows("model.embed_tokens.weight", 100, 2),
        emb.slice(6400, 6528),
      );
      assert.equal(idx.metadata().format, "pt");
    } finally {
      idx.close();
    }
  },
});

Deno.test({
  name: "tinyllama BF16 fixture reads as f32 and passes checkTensors",
  ignore: !HAS_SHARED,
  fn: async () => {
    const idx = await SafetensorsIndex.open(TINYLLAMA);
    try {
      const cfg = await loadConfig(TINYLLAMA);
      checkTensors(cfg, idx);
      const name = "model.layers.0.self_attn.q_proj.weight";
      assert.equal(idx.info(name).dtype, "BF16");
      const raw = await idx.readRaw(name);
      const w = await idx.readF32(name);
      assert.equal(w.length, 256 * 256);
      const bits = new Uint32Array(w.buffer);
      for (let i = 0; i < w.length; i++) {
        assert.equal(bits[i], ((raw[2 * i] | (raw[2 * i + 1] << 8)) << 16) >>> 0);
      }
      assert.ok(w.every(Number.isFinite));
      assert.ok(w.some((v) => v !== 0));
      const emb = await idx.readF32("model.embed_tokens.weight");
      assert.deepEqual(
        await idx.readRows("model.embed_tokens.weight", 4094, 2),
        emb.slice(4094 * 256),
      );
    } finally {
      idx.close();
    }
  },
});
