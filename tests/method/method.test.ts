// Each method in the registry plans, quantizes a block and describes itself consistently: its
// name is its key, its quantization_config names it and lists every linear, and the tensors it
// exports for a block are the modules it lists.
import assert from "node:assert/strict";
import { join } from "node:path";
import { openModel } from "../../src/format/open.ts";
import { type BlockStats, INPUT_NAMES, inputDims } from "../../src/cluster/stats.ts";
import { getGpu } from "../../src/gpu/device.ts";
import { linearNames } from "../../src/io/config.ts";
import { methods } from "../../src/method/mod.ts";
import { clusterSettings, KJV } from "../settings.ts";

Deno.test("every registered method describes itself and the blocks it quantizes", async () => {
  const dir = await Deno.makeTempDir();
  const m = await openModel(KJV);
  try {
    const gpu = await getGpu();
    // Identity statistics: every method that needs them (GPTQ) gets a well-posed Hessian.
    const dims = inputDims(m.cfg);
    const eye = (n: number) => Float32Array.from({ length: n * n }, (_, i) => i % (n + 1) ? 0 : 1);
    const each = (f: (n: number) => Float32Array) =>
      Object.fromEntries(INPUT_NAMES.map((k) => [k, f(dims[k])])) as BlockStats["diag"];
    const stats = () =>
      Promise.resolve({
        tokens: 1,
        diag: each((n) => new Float32Array(n).fill(1)),
        gram: each(eye),
      });
    const settings = {
      stats,
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
