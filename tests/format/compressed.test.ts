// The compressed folder's ClusComp tensors: packed codes (and the U8 / U16 codes of folders
// written before packing) read back through CompressedSource.codebook and linearT, for every
// code width 1..16, and bad folders refused with a UserError naming the tensor. Synthetic
// folders built on the embedded fixtures/kjv-llama: some linears replaced by random codebooks
// and codes, the rest left dense.
import assert from "node:assert/strict";
import { decodeT } from "../../src/cluster/vectorize.ts";
import { UserError } from "../../src/errors.ts";
import {
  type ClusterModule,
  CODES_PACKING,
  CompressedSource,
  packedCodesTensor,
  type QuantizationConfig,
  type TensorBytes,
  writeCompressedModel,
} from "../../src/format/compressed.ts";
import { codeBits, packCodes, packedBytes, unpackCodes } from "../../src/io/pack.ts";
import { type LinearKind, linearNames, loadConfig } from "../../src/io/config.ts";
import {
  bytesToF32,
  f32ToBf16Bytes,
  f32ToF16Bytes,
  SafetensorsIndex,
} from "../../src/io/safetensors.ts";
import { openModel } from "../../src/format/open.ts";
import { Rng } from "../../src/util/rng.ts";

/** Same length and elements (first mismatch reported; no diff of large arrays). */
function assertSame(got: ArrayLike<number>, want: ArrayLike<number>, label: string): void {
  assert.equal(got.length, want.length, `${label}: length`);
  for (let i = 0; i < got.length; i++) {
    if (!Object.is(got[i], want[i])) assert.fail(`${label}: [${i}] is ${got[i]}, want ${want[i]}`);
  }
}

const KJV = new URL("../../fixtures/kjv-llama", import.meta.url).pathname;

interface ModuleSpec {
  layer: number;
  kind: LinearKind;
  n: number;
  d: number;
  splits: number;
}

// kjv-llama: hidden 128, intermediate 384, 2 KV heads of 32: q, o [128x128], k, v [64x128],
// gate, up [384x128], down [128x384]. One module per code width 1..16 (n = 2 .. 65536, powers
// of two and not), d with and without padding, two with splits; layer 3 stays dense.
const SPECS: ModuleSpec[] = [
  { layer: 0, kind: "q", n: 2, d: 1, splits: 1 }, // 1 bit
  { layer: 0, kind: "k", n: 3, d: 2, splits: 1 }, // 2 bits, n not a power of two
  { layer: 0, kind: "v", n: 8, d: 3, splits: 1 }, // 3 bits, 64 = 21 * 3 + 1: pad 2
  { layer: 0, kind: "o", n: 11, d: 4, splits: 2 }, // 4 bits
  { layer: 0, kind: "gate", n: 32, d: 5, splits: 1 }, // 5 bits, pad 1
  { layer: 0, kind: "up", n: 33, d: 2, splits: 1 }, // 6 bits
  { layer: 0, kind: "down", n: 128, d: 1, splits: 1 }, // 7 bits
  { layer: 1, kind: "q", n: 200, d: 4, splits: 1 }, // 8 bits
  { layer: 1, kind: "k", n: 512, d: 2, splits: 1 }, // 9 bits
  { layer: 1, kind: "v", n: 1000, d: 1, splits: 1 }, // 10 bits
  { layer: 1, kind: "o", n: 2048, d: 2, splits: 2 }, // 11 bits
  { layer: 1, kind: "gate", n: 3000, d: 1, splits: 1 }, // 12 bits
  { layer: 1, kind: "up", n: 8192, d: 1, splits: 1 }, // 13 bits
  { layer: 1, kind: "down", n: 10000, d: 1, splits: 1 }, // 14 bits
  { layer: 2, kind: "q", n: 32768, d: 2, splits: 1 }, // 15 bits
  { layer: 2, kind: "k", n: 65536, d: 1, splits: 1 }, // 16 bits
  { layer: 2, kind: "v", n: 40000, d: 2, splits: 1 }, // 16 bits, n not a power of two
];

const cfg = await loadConfig(KJV);

function linOf(s: ModuleSpec) {
  return linearNames(s.layer, cfg).find((l) => l.kind === s.kind)!;
}
const nameOf = (s: ModuleSpec) => linOf(s).name.replace(/\.weight$/, "");

/** What a module holds: f32 centroids as stored (rounded to f16 / bf16) and its codes. */
interface Written {
  spec: ModuleSpec;
  centroids: Float32Array;
  codes: Uint32Array;
  codebook: TensorBytes;
}

/** Seeded random content of every module: codes with 0 and n - 1 planted. */
function content(): Written[] {
  return SPECS.map((spec, i) => {
    const lin = linOf(spec), rng = new Rng(1000 + i);
    const count = lin.in * Math.ceil(lin.out / spec.d);
    const codes = new Uint32Array(count);
    for (let k = 0; k < count; k++) codes[k] = rng.int(spec.n);
    codes[0] = spec.n - 1;
    codes[1] = 0;
    codes[count - 1] = spec.n - 1;
    const f = new Float32Array(spec.splits * spec.n * spec.d);
    for (let k = 0; k < f.length; k++) f[k] = rng.next() * 2 - 1;
    const bf16 = i % 2 === 1;
    const data = bf16 ? f32ToBf16Bytes(f) : f32ToF16Bytes(f);
    const dtype = bf16 ? "BF16" : "F16";
    const shape = spec.splits === 1 ? [spec.n, spec.d] : [spec.splits, spec.n, spec.d];
    return {
      spec,
      centroids: bytesToF32(data, dtype),
      codes,
      codebook: { name: `${nameOf(spec)}.codebook`, dtype, shape, data },
    };
  });
}

const WRITTEN = content();

type Format = "packed" | "old";

/** One code per element, as folders before packing stored them. */
function oldCodes(w: Written): TensorBytes {
  const lin = linOf(w.spec), cols = Math.ceil(lin.out / w.spec.d);
  const u8 = w.spec.n <= 256;
  const arr = u8 ? Uint8Array.from(w.codes) : Uint16Array.from(w.codes);
  return {
    name: `${nameOf(w.spec)}.codes`,
    dtype: u8 ? "U8" : "U16",
    shape: [lin.in, cols],
    data: new Uint8Array(arr.buffer),
  };
}

/**
 * Writes a compressed folder of WRITTEN in either format; `edit` may change the block tensors
 * and the quantization_config before they are written.
 */
async function makeFolder(
  format: Format,
  edit?: (tensors: TensorBytes[], qc: QuantizationConfig) => void,
): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-format-" });
  const modules: QuantizationConfig["modules"] = {};
  const byLayer: TensorBytes[][] = Array.from({ length: cfg.layers }, () => []);
  for (const w of WRITTEN) {
    const name = nameOf(w.spec), lin = linOf(w.spec);
    const old = oldCodes(w);
    const m: ClusterModule = {
      d: w.spec.d,
      n: w.spec.n,
      pad: Math.ceil(lin.out / w.spec.d) * w.spec.d - lin.out,
      splits: w.spec.splits,
      codebook_dtype: w.codebook.dtype === "BF16" ? "bf16" : "f16",
      codes_dtype: format === "packed" ? "packed" : old.dtype as "U8" | "U16",
    };
    if (format === "packed") m.code_bits = codeBits(w.spec.n);
    modules[name] = m;
    const codes = format === "packed" ? packedCodesTensor(old, w.spec.n) : old;
    byLayer[w.spec.layer].push(w.codebook, codes);
  }
  const qc: QuantizationConfig = {
    quant_method: "cluscomp",
    bits_per_weight: 0,
    stored_bits_per_weight: 0,
    ...(format === "packed" ? { codes_packing: CODES_PACKING } : {}),
    modules,
  };
  edit?.(byLayer.flat(), qc);
  const index = await SafetensorsIndex.open(KJV);
  try {
    await writeCompressedModel(KJV, `${dir}/m`, cfg, qc, (l) => {
      const own = byLayer[l];
      const dense = linearNames(l, cfg).filter((lin) =>
        !qc.modules[lin.name.replace(/\.weight$/, "")]
      );
      return Promise.all([
        ...own.map((t) => Promise.resolve(t)),
        ...dense.map(async (lin) => ({
          name: lin.name,
          dtype: index.info(lin.name).dtype,
          shape: index.info(lin.name).shape,
          data: await index.readRaw(lin.name),
        })),
      ]);
    }, index);
  } finally {
    index.close();
  }
  return `${dir}/m`;
}

/** The folder's ClusComp source, opened with its checks. */
async function sourceOf(dir: string): Promise<CompressedSource> {
  const m = await openModel(dir);
  return m.source as CompressedSource;
}

/** A source that skips openModel's checks (to reach codebook()'s own validation). */
async function uncheckedSource(dir: string): Promise<CompressedSource> {
  const qc = JSON.parse(await Deno.readTextFile(`${dir}/config.json`)).quantization_config;
  return new CompressedSource(cfg, await SafetensorsIndex.open(dir), qc);
}

function rejectsNaming(tensor: string, fn: () => Promise<unknown>, what?: string) {
  return assert.rejects(fn, (e: unknown) => {
    assert.ok(e instanceof UserError, `${what ?? tensor}: expected a UserError, got ${e}`);
    assert.ok(
      e.message.includes(tensor),
      `${what ?? tensor}: message "${e.message}" does not name ${tensor}`,
    );
    assert.ok(!e.message.includes("\n"), "one line");
    return true;
  });
}

const PACKED = await makeFolder("packed");
const OLD = await makeFolder("old");

Deno.test("compressed: the packed folder stores 1-D U8 codes of packedBytes at code_bits", async () => {
  const config = JSON.parse(await Deno.readTextFile(`${PACKED}/config.json`));
  const qc = config.quantization_config as QuantizationConfig;
  assert.equal(qc.codes_packing, "lsb-u8");
  const index = await SafetensorsIndex.open(PACKED);
  const widths = new Set<number>();
  for (const w of WRITTEN) {
    const name = nameOf(w.spec), lin = linOf(w.spec);
    const m = qc.modules[name] as ClusterModule;
    assert.equal(m.codes_dtype, "packed");
    assert.equal(m.code_bits, Math.max(1, Math.ceil(Math.log2(w.spec.n))));
    widths.add(m.code_bits!);
    const t = index.info(`${name}.codes`);
    assert.equal(t.dtype, "U8");
    assert.deepEqual(t.shape, [
      Math.ceil(lin.in * Math.ceil(lin.out / w.spec.d) * m.code_bits! / 8),
    ]);
  }
  assert.deepEqual([...widths].sort((a, b) => a - b), Array.from({ length: 16 }, (_, i) => i + 1));
  index.close();
});

for (const format of ["packed", "old"] as const) {
  Deno.test(`compressed (${format}): codebook() gives back the codes written, widths 1..16`, async () => {
    const src = await sourceOf(format === "packed" ? PACKED : OLD);
    for (const w of WRITTEN) {
      const lin = linOf(w.spec);
      const cb = (await src.codebook(w.spec.layer, w.spec.kind))!;
      const label = `${format} ${nameOf(w.spec)} n=${w.spec.n}`;
      assert.ok(cb, `${label}: null`);
      assert.deepEqual(
        [cb.in, cb.out, cb.d, cb.n, cb.splits, cb.bits],
        [lin.in, lin.out, w.spec.d, w.spec.n, w.spec.splits, codeBits(w.spec.n)],
        label,
      );
      assertSame(cb.centroids, w.centroids, `${label}: centroids`);
      assertSame(cb.codes, packCodes(w.codes, cb.bits), `${label}: packed words`);
      assertSame(unpackCodes(cb.codes, w.codes.length, cb.bits), w.codes, `${label}: codes`);
    }
    // Dense linears (all of layer 3) have no codebook; neither has an RTN folder.
    for (const kind of ["q", "down"] as const) assert.equal(await src.codebook(3, kind), null);
    assert.equal(await src.codebook(2, "o"), null);
    const rtn = new CompressedSource(cfg, src.index, { ...src.qc, quant_method: "rtn" });
    assert.equal(await rtn.codebook(0, "q"), null);
    src.index.close();
  });

  Deno.test(`compressed (${format}): linearT is decodeT of the written codes`, async () => {
    const src = await sourceOf(format === "packed" ? PACKED : OLD);
    for (const w of WRITTEN) {
      const lin = linOf(w.spec), rows = lin.in / w.spec.splits;
      const cols = Math.ceil(lin.out / w.spec.d), per = w.spec.n * w.spec.d;
      const want = new Float32Array(lin.in * lin.out);
      for (let s = 0; s < w.spec.splits; s++) {
        const part = decodeT(
          w.centroids.subarray(s * per, (s + 1) * per),
          w.codes.subarray(s * rows * cols, (s + 1) * rows * cols),
          rows,
          lin.out,
          w.spec.d,
        );
        want.set(part, s * rows * lin.out);
      }
      const got = await src.linearT(w.spec.layer, w.spec.kind);
      assertSame(got, want, `${format} ${nameOf(w.spec)}`);
    }
    src.index.close();
  });
}

Deno.test("compressed: an old U8 / U16 folder gives the same CodebookData as the packed one", async () => {
  const a = await sourceOf(PACKED), b = await sourceOf(OLD);
  for (let l = 0; l < cfg.layers; l++) {
    for (const lin of linearNames(l, cfg)) {
      const x = await a.codebook(l, lin.kind), y = await b.codebook(l, lin.kind);
      const label = `layer ${l} ${lin.kind}`;
      assert.equal(x === null, y === null, label);
      if (!x || !y) continue;
      const { centroids: xc, codes: xw, ...xs } = x, { centroids: yc, codes: yw, ...ys } = y;
      assert.deepEqual(xs, ys, label);
      assertSame(xc, yc, `${label}: centroids`);
      assertSame(xw, yw, `${label}: codes`);
    }
  }
  a.index.close();
  b.index.close();
});

const K0 = "model.layers.0.self_attn.k_proj"; // n = 3: 2-bit codes, 3 does not fit n
const GATE1 = "model.layers.1.mlp.gate_proj"; // n = 3000: 12-bit codes

/** Replaces one byte-level code of a module in the tensors (old format: element i). */
function setOldCode(tensors: TensorBytes[], name: string, at: number, code: number) {
  const t = tensors.find((x) => x.name === `${name}.codes`)!;
  if (t.dtype === "U8") t.data[at] = code;
  else new DataView(t.data.buffer, t.data.byteOffset).setUint16(at * 2, code, true);
}

/** Sets packed code `at` (of `bits` bits) to `code`. */
function setPackedCode(
  tensors: TensorBytes[],
  name: string,
  bits: number,
  at: number,
  code: number,
) {
  const t = tensors.find((x) => x.name === `${name}.codes`)!;
  for (let j = 0; j < bits; j++) {
    const bit = at * bits + j;
    if ((code >> j) & 1) t.data[bit >> 3] |= 1 << (bit & 7);
    else t.data[bit >> 3] &= ~(1 << (bit & 7));
  }
}

Deno.test("compressed: packed codes one byte short are refused, naming the tensor", async () => {
  const dir = await makeFolder("packed", (tensors) => {
    const t = tensors.find((x) => x.name === `${K0}.codes`)!;
    t.data = t.data.slice(0, t.data.length - 1);
    t.shape = [t.data.length];
  });
  await rejectsNaming(`${K0}.codes`, () => openModel(dir), "openModel");
  const src = await uncheckedSource(dir);
  await rejectsNaming(`${K0}.codes`, () => src.codebook(0, "k"), "codebook()");
  await rejectsNaming(`${K0}.codes`, () => src.linearT(0, "k"), "linearT");
  // The other modules still load.
  assert.ok(await src.codebook(0, "q"));
  src.index.close();
  await Deno.remove(dir.replace(/\/m$/, ""), { recursive: true });
});

Deno.test("compressed: a code >= n is refused, naming the tensor (old U8 / U16, packed)", async () => {
  const cases: [string, Format, (t: TensorBytes[]) => void, LinearKind, number][] = [
    ["old U8", "old", (t) => setOldCode(t, K0, 77, 3), "k", 0],
    ["old U8, 255", "old", (t) => setOldCode(t, K0, 5, 255), "k", 0],
    ["old U16", "old", (t) => setOldCode(t, GATE1, 1234, 3000), "gate", 1],
    ["packed, n = 3", "packed", (t) => setPackedCode(t, K0, 2, 77, 3), "k", 0],
    ["packed, last code", "packed", (t) => setPackedCode(t, K0, 2, 128 * 32 - 1, 3), "k", 0],
    ["packed, n = 3000", "packed", (t) => setPackedCode(t, GATE1, 12, 999, 4095), "gate", 1],
  ];
  for (const [label, format, edit, kind, layer] of cases) {
    const dir = await makeFolder(format, (t) => edit(t));
    const name = kind === "k" ? K0 : GATE1;
    const src = await sourceOf(dir); // shapes are right: opening succeeds
    await rejectsNaming(`${name}.codes`, () => src.codebook(layer, kind), `${label}: codebook()`);
    await rejectsNaming(`${name}.codes`, () => src.linearT(layer, kind), `${label}: linearT`);
    src.index.close();
    await Deno.remove(dir.replace(/\/m$/, ""), { recursive: true });
  }
});

Deno.test("compressed: bad quantization_config or codebook is refused, naming the tensor", async () => {
  const cases: [string, Format, (t: TensorBytes[], qc: QuantizationConfig) => void, string][] = [
    ["code_bits mismatch", "packed", (_, qc) => {
      (qc.modules[K0] as ClusterModule).code_bits = 3;
    }, `${K0}.codes`],
    ["code_bits missing", "packed", (_, qc) => {
      delete (qc.modules[K0] as ClusterModule).code_bits;
    }, `${K0}.codes`],
    ["unknown codes_dtype", "packed", (_, qc) => {
      (qc.modules[K0] as { codes_dtype: string }).codes_dtype = "U4";
    }, `modules["${K0}"].codes_dtype`],
    ["codes_dtype says U16, tensor is U8", "old", (_, qc) => {
      (qc.modules[K0] as ClusterModule).codes_dtype = "U16";
    }, `${K0}.codes`],
    ["codebook shape", "packed", (t) => {
      const cb = t.find((x) => x.name === `${GATE1}.codebook`)!;
      cb.shape = [cb.shape[0] / 2, cb.shape[1] * 2];
    }, `${GATE1}.codebook`],
  ];
  for (const [label, format, edit, tensor] of cases) {
    const dir = await makeFolder(format, edit);
    await rejectsNaming(tensor, () => openModel(dir), `${label}: openModel`);
    const src = await uncheckedSource(dir);
    const [layer, kind]: [number, LinearKind] = tensor.includes(K0) ? [0, "k"] : [1, "gate"];
    await rejectsNaming(tensor, () => src.codebook(layer, kind), `${label}: codebook()`);
    src.index.close();
    await Deno.remove(dir.replace(/\/m$/, ""), { recursive: true });
  }
});

Deno.test("compressed: packedBytes of the stream matches the header's byte count", () => {
  // Independent of the folder: 128 x 43 codes at 3 bits = 16,512 bits = 2,064 bytes.
  assert.equal(packedBytes(128 * 43, 3), 2064);
});

globalThis.addEventListener("unload", () => {
  for (const d of [PACKED, OLD]) {
    try {
      Deno.removeSync(d.replace(/\/m$/, ""), { recursive: true });
    } catch { /* gone */ }
  }
});
