// quantization_config read back from config.json is validated: a hand-edited or corrupt field
// gives one UserError naming the file and the field.
import assert from "node:assert/strict";
import { readQuantConfig } from "../../src/format/compressed.ts";
import { UserError } from "../../src/errors.ts";

const GOOD = {
  quant_method: "cluscomp",
  bits_per_weight: 2.01,
  stored_bits_per_weight: 2.01,
  codes_packing: "lsb-u8",
  modules: {
    "model.layers.0.self_attn.q_proj": {
      d: 4,
      n: 256,
      pad: 0,
      splits: 1,
      codebook_dtype: "f16",
      codes_dtype: "packed",
      code_bits: 8,
    },
  },
};

async function folderWith(qc: unknown): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-qc-" });
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ quantization_config: qc }));
  return dir;
}

Deno.test("a valid quantization_config reads back; none means a dense folder", async () => {
  const qc = await readQuantConfig(await folderWith(GOOD));
  assert.equal(qc?.quant_method, "cluscomp");
  assert.equal(await readQuantConfig(await folderWith(undefined)), null);
});

const BAD: [string, (qc: typeof GOOD) => unknown, string][] = [
  ["an unknown quant_method", (qc) => ({ ...qc, quant_method: "gguf" }), "quant_method"],
  ["modules missing", ({ modules: _, ...rest }) => rest, "quantization_config.modules"],
  ["an unknown codes_packing", (qc) => ({ ...qc, codes_packing: "msb" }), "codes_packing"],
  ["bits_per_weight as text", (qc) => ({ ...qc, bits_per_weight: "2" }), "bits_per_weight"],
  [
    "a module's n as text",
    (qc) => ({
      ...qc,
      modules: { m: { ...qc.modules["model.layers.0.self_attn.q_proj"], n: "256" } },
    }),
    'modules["m"].n',
  ],
  [
    "a module's codebook_dtype unknown",
    (qc) => ({
      ...qc,
      modules: { m: { ...qc.modules["model.layers.0.self_attn.q_proj"], codebook_dtype: "f8" } },
    }),
    'modules["m"].codebook_dtype',
  ],
  [
    "code_bits above 16",
    (qc) => ({
      ...qc,
      modules: { m: { ...qc.modules["model.layers.0.self_attn.q_proj"], code_bits: 17 } },
    }),
    'modules["m"].code_bits',
  ],
];

for (const [what, edit, field] of BAD) {
  Deno.test(`quantization_config with ${what} is refused naming ${field}`, async () => {
    const dir = await folderWith(edit(structuredClone(GOOD)));
    await assert.rejects(
      () => readQuantConfig(dir),
      (e: Error) =>
        e instanceof UserError && e.message.includes(`${dir}/config.json`) &&
        e.message.includes(field) && !e.message.includes("\n"),
    );
  });
}

Deno.test("config.json that is not JSON is refused naming the file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-qc-" });
  await Deno.writeTextFile(`${dir}/config.json`, "{ not json");
  await assert.rejects(() => readQuantConfig(dir), /config\.json: not valid JSON/);
});
