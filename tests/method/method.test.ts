// Each method in the registry plans, quantizes a block and describes itself consistently: its
// name is its key, its quantization_config names it and lists every linear, and the tensors it
// exports for a block are the modules it lists.
import assert from "node:assert/strict";
import { join } from "node:path";
import { openModel } from "../../src/format/open.ts";
import { getGpu } from "../../src/gpu/device.ts";
import { linearNames } from "../../src/io/config.ts";
import { methods } from "../../src/method/mod.ts";
import { clusterSettings, KJV } from "../settings.ts";

Deno.test("every registered method describes itself and the blocks it quantizes", async () => {
  const dir = await Deno.makeTempDir();
  const m = await openModel(KJV);
  try {
    const gpu = await getGpu();
    const settings = {
      work: join(dir, "work"),
      cluster: clusterSettings({ d: 4, n: 16 }),
      rtn: { bits: 4, group: 32 },
    };
    for (const [key, method] of Object.entries(methods)) {
      assert.equal(method.name, key);
      const p = await method.plan(m.cfg, m.source, settings, "inputs");
      assert.ok(p.bits.total > 0 && p.bits.stored >= p.bits.total, key);
      assert.ok(p.note.length > 0 && p.settings !== undefined, key);
      if (method.finetunable) assert.ok(p.matrices?.length, `${key}: finetuning needs a plan`);
      const qc = p.quantConfig();
      assert.equal(qc.quant_method, key);
      assert.equal(qc.bits_per_weight, p.bits.total);
      const names = linearNames(0, m.cfg).map((l) => l.name.replace(/\.weight$/, ""));
      assert.equal(Object.keys(qc.modules).length, m.cfg.layers * names.length, key);
      const unit = await p.quantizeBlock(gpu, 0);
      assert.equal(unit.facts.length, names.length, key);
      const exported = p.blockTensors(unit.tensors);
      const modules = new Set(exported.map((t) => t.name.replace(/\.[a-z]+$/, "")));
      assert.deepEqual([...modules].sort(), [...names].sort(), key);
    }
  } finally {
    m.index.close();
    await Deno.remove(dir, { recursive: true });
  }
});
