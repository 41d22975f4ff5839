// compress writes codes packed at their bit width (quantization_config, tensors, stored bits in
// the report), and `export --dequantize --dtype` decodes them: f32 reproduces linearT exactly,
// bf16 rounds, a bad --dtype is one error line. On the embedded fixtures/kjv-llama.
import assert from "node:assert/strict";
import type { ClusterModule, QuantizationConfig } from "../../src/format/compressed.ts";
import { unpackCodes } from "../../src/io/pack.ts";
import { linearNames, loadConfig } from "../../src/io/config.ts";
import { decodeSafetensors, SafetensorsIndex } from "../../src/io/safetensors.ts";
import { openModel } from "../../src/format/open.ts";
import { compress } from "../../src/pipeline/compress.ts";
import { Progress } from "../../src/util/progress.ts";
import { transpose } from "../../src/util/matrix.ts";
import { runTask } from "../pipeline/run.ts";
import { quickSettings } from "../settings.ts";

/** Same length and elements (first mismatch reported; no diff of large arrays). */
function assertSame(got: ArrayLike<number>, want: ArrayLike<number>, label: string): void {
  assert.equal(got.length, want.length, `${label}: length`);
  for (let i = 0; i < got.length; i++) {
    if (!Object.is(got[i], want[i])) assert.fail(`${label}: [${i}] is ${got[i]}, want ${want[i]}`);
  }
}

const KJV = new URL("../../fixtures/kjv-llama", import.meta.url).pathname;
const cfg = await loadConfig(KJV);
// 4-bit codes everywhere but q (n = 37: 6 bits, not a power of two) and down (n = 2: 1 bit).
const OVERRIDES = { q: { d: 2, n: 37 }, down: { d: 1, n: 2 } };

const dir = await Deno.makeTempDir({ prefix: "cluscomp-export-" });
const OUT = `${dir}/out`;
await compress(
  quickSettings(KJV, dir, { d: 4, n: 16, overrides: OVERRIDES, iters: 2 }),
  new Progress(true),
);

Deno.test("compress writes packed codes: quantization_config, tensors, the unit's codes", async () => {
  const qc = JSON.parse(await Deno.readTextFile(`${OUT}/config.json`))
    .quantization_config as QuantizationConfig;
  assert.equal(qc.codes_packing, "lsb-u8");
  const index = await SafetensorsIndex.open(OUT);
  for (let l = 0; l < cfg.layers; l++) {
    const unit = decodeSafetensors(
      await Deno.readFile(`${dir}/work/cluster/block-${String(l).padStart(3, "0")}.safetensors`),
      "unit",
    );
    for (const lin of linearNames(l, cfg)) {
      const name = lin.name.replace(/\.weight$/, "");
      const m = qc.modules[name] as ClusterModule;
      const want = (OVERRIDES as Record<string, { d: number; n: number }>)[lin.kind] ??
        { d: 4, n: 16 };
      const bits = Math.ceil(Math.log2(want.n)) || 1;
      assert.deepEqual(
        [m.d, m.n, m.codes_dtype, m.code_bits, m.codebook_dtype],
        [want.d, want.n, "packed", bits, "f16"],
        name,
      );
      const count = lin.in * Math.ceil(lin.out / want.d);
      const t = index.info(`${name}.codes`);
      assert.equal(t.dtype, "U8");
      assert.deepEqual(t.shape, [Math.ceil((count * bits) / 8)], name);
      // The exported stream holds the unit's codes (U8 there, one per element).
      const u = unit.find((x) => x.name === `${name}.codes`)!;
      const raw = await index.readRaw(`${name}.codes`);
      const words = new Uint32Array(Math.ceil(raw.length / 4));
      new Uint8Array(words.buffer).set(raw);
      assertSame(unpackCodes(words, count, bits), u.data, name);
    }
  }
  index.close();
});

Deno.test("report: stored bits per weight count codes at ceil(log2 n) bits", async () => {
  const report = JSON.parse(await Deno.readTextFile(`${OUT}/report.json`));
  let stored = 0, ideal = 0, weights = 0;
  for (const lin of linearNames(0, cfg)) {
    const { d, n } = (OVERRIDES as Record<string, { d: number; n: number }>)[lin.kind] ??
      { d: 4, n: 16 };
    const codes = lin.in * Math.ceil(lin.out / d);
    stored += Math.max(1, Math.ceil(Math.log2(n))) * codes + 16 * n * d;
    ideal += Math.log2(n) * codes + 16 * n * d;
    weights += lin.in * lin.out;
  }
  assert.ok(Math.abs(report.stored_bits_per_weight - stored / weights) < 1e-12);
  assert.ok(Math.abs(report.bits_per_weight - ideal / weights) < 1e-12);
  // Only q (n = 37) is not a power of two: stored exceeds the ideal by its rounding alone.
  assert.ok(report.stored_bits_per_weight > report.bits_per_weight);
  const md = await Deno.readTextFile(`${OUT}/report.md`);
  assert.match(md, /as stored \(codes packed at ceil\(log2 n\) bits, 16-bit codebooks\): \d/);
});

/** Every linear of an exported dense folder against the compressed folder's linearT. */
async function compareExport(
  dense: string,
  want: "F32" | "BF16",
): Promise<{ exact: number; total: number }> {
  const src = await openModel(OUT), out = await openModel(dense);
  assert.equal(out.quant, null);
  let exact = 0, total = 0;
  for (let l = 0; l < cfg.layers; l++) {
    for (const lin of linearNames(l, cfg)) {
      assert.equal(out.index.info(lin.name).dtype, want, lin.name);
      const a = await src.source.linearT(l, lin.kind);
      const b = transpose(await out.index.readF32(lin.name), lin.out, lin.in);
      for (let i = 0; i < a.length; i++) if (a[i] === b[i]) exact++;
      total += a.length;
    }
  }
  for (const t of ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]) {
    assert.equal(out.index.info(t).dtype, want, t);
    assertSame(await out.index.readF32(t), await src.index.readF32(t), t);
  }
  const config = JSON.parse(await Deno.readTextFile(`${dense}/config.json`));
  assert.equal(config.torch_dtype, want === "F32" ? "float32" : "bfloat16");
  src.index.close();
  out.index.close();
  return { exact, total };
}

Deno.test("export --dtype f32 reproduces linearT exactly; bf16 (the default here) rounds", async () => {
  const f32 = await runTask("export", ["--dequantize", OUT, `${dir}/f32`, "--dtype", "f32"]);
  assert.equal(f32.code, 0, f32.stderr);
  const a = await compareExport(`${dir}/f32`, "F32");
  assert.equal(a.exact, a.total, "f32 export differs from linearT");

  const bf = await runTask("export", ["--dequantize", OUT, `${dir}/bf16`, "--dtype", "bf16"]);
  assert.equal(bf.code, 0, bf.stderr);
  assert.match(bf.stderr, /f16 codebook values are rounded to bf16/);
  const b = await compareExport(`${dir}/bf16`, "BF16");
  assert.ok(b.exact < b.total, "bf16 export should round f16 codebook values");

  // kjv-llama's torch_dtype is bfloat16: the default is the bf16 export, byte for byte.
  const def = await runTask("export", ["--dequantize", OUT, `${dir}/default`, "--quiet"]);
  assert.equal(def.code, 0, def.stderr);
  for (const f of ["config.json", "model-00002-of-00005.safetensors"]) {
    assertSame(
      await Deno.readFile(`${dir}/default/${f}`),
      await Deno.readFile(`${dir}/bf16/${f}`),
      f,
    );
  }
});

Deno.test("export: a bad --dtype is one error line naming --dtype, exit 1", async () => {
  for (const bad of ["fp8", "F32", ""]) {
    const r = await runTask("export", ["--dequantize", OUT, `${dir}/bad`, "--dtype", bad]);
    assert.equal(r.code, 1, r.stderr);
    const lines = r.stderr.trim().split("\n").filter((l) => !l.includes("MESA") && l.trim());
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], /^error: .*--dtype/);
  }
  const missing = await runTask("export", ["--dequantize", OUT, `${dir}/bad`, "--dtype"]);
  assert.equal(missing.code, 1, missing.stderr);
  assert.match(missing.stderr, /dtype/);
});

globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(dir, { recursive: true });
  } catch { /* gone */ }
});
