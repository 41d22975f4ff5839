// The GPTQ method (src/method/gptq.ts) on the embedded kjv-llama with Hessians from seeded
// statistics of the stats stage's shape: it refuses to run without statistics, its block units
// hold exactly the reference's codes for every linear, and the folder it describes loads, decodes
// and evaluates through the same paths as an RTN folder (runner == exported dense folder).
import assert from "node:assert/strict";
import { join } from "node:path";
import { rtnDequantize } from "../../src/cluster/rtn.ts";
import { type BlockStats, INPUT_NAMES, inputDims, inputOf } from "../../src/cluster/stats.ts";
import { UserError } from "../../src/errors.ts";
import { evaluatePerplexity } from "../../src/eval/perplexity.ts";
import { dequantize } from "../../src/export/dequantize.ts";
import { type TensorBytes, writeCompressedModel } from "../../src/format/compressed.ts";
import { openModel } from "../../src/format/open.ts";
import { getGpu } from "../../src/gpu/device.ts";
import { linearNames } from "../../src/io/config.ts";
import { bytesToF32 } from "../../src/io/safetensors.ts";
import { gptq } from "../../src/method/gptq.ts";
import { methods } from "../../src/method/mod.ts";
import { transpose } from "../../src/util/matrix.ts";
import { Progress } from "../../src/util/progress.ts";
import { gramOf, seededInputs } from "../cluster/gptq_data.ts";
import { gptqReference } from "../reference/gptq.ts";
import { clusterSettings, KJV } from "../settings.ts";

const TOKENS = 400;
const G = { bits: 3, group: 32, actOrder: true, damp: 0.01 };

/** Seeded statistics per block, full (diag and Gram), as src/cluster/stats.ts gives them. */
function seededStats(dims: Record<string, number>, full = true) {
  return (layer: number): Promise<BlockStats> => {
    const diag = {} as BlockStats["diag"], gram = {} as NonNullable<BlockStats["gram"]>;
    INPUT_NAMES.forEach((name, k) => {
      const n = dims[name];
      const x = seededInputs(TOKENS, n, 100 * layer + k);
      gram[name] = gramOf(x, TOKENS, n);
      diag[name] = Float32Array.from({ length: n }, (_, i) => gram[name][i * n + i] / TOKENS);
    });
    return Promise.resolve(full ? { tokens: TOKENS, diag, gram } : { tokens: TOKENS, diag });
  };
}

Deno.test("gptq method: needs statistics, and its units hold the reference's codes", async () => {
  const m = await openModel(KJV);
  try {
    assert.equal(methods.gptq, gptq);
    assert.equal(gptq.needsStats, "full");
    const base = { work: "unused", cluster: clusterSettings(), rtn: { bits: 4, group: 128 } };
    await assert.rejects(
      () => gptq.plan(m.cfg, m.source, { ...base, gptq: G }, "inputs"),
      (e: Error) => e instanceof UserError && /--calib/.test(e.message),
    );
    const stats = seededStats(inputDims(m.cfg));
    const p = await gptq.plan(m.cfg, m.source, { ...base, gptq: G, stats, statsKey: "k" }, "x");
    assert.deepEqual(p.settings, { ...G, stats: "k" });
    const qc = p.quantConfig();
    assert.equal(qc.quant_method, "gptq");
    const names = linearNames(0, m.cfg).map((l) => l.name.replace(/\.weight$/, ""));
    assert.equal(Object.keys(qc.modules).length, m.cfg.layers * names.length);
    assert.deepEqual(qc.modules[names[0]], { bits: 3, group: 32, act_order: true, damp: 0.01 });
    const gpu = await getGpu();
    const layer = 1;
    const unit = await p.quantizeBlock(gpu, layer);
    assert.equal(unit.facts.length, names.length);
    const s = await stats(layer);
    for (const lin of linearNames(layer, m.cfg)) {
      const name = lin.name.replace(/\.weight$/, "");
      const get = (suffix: string) => unit.tensors.find((t) => t.name === `${name}.${suffix}`)!;
      const w = transpose(await m.source.linearT(layer, lin.kind), lin.in, lin.out);
      const want = gptqReference(w, lin.out, lin.in, s.gram![inputOf(lin.kind)], TOKENS, G);
      const groups = Math.ceil(lin.in / G.group);
      assert.deepEqual(get("qweight").shape, [lin.out, lin.in]);
      assert.deepEqual(get("scales").shape, [lin.out, groups]);
      assert.deepEqual(get("qweight").data, want.q, `${name}.qweight`);
      assert.deepEqual(bytesToF32(get("scales").data, "F16"), want.scales, `${name}.scales`);
      assert.deepEqual(get("zeros").data, want.zeros, `${name}.zeros`);
      const f = unit.facts.find((x) => x.kind === lin.kind)!;
      assert.ok(f.objective > 0 && Math.abs(f.mse - f.objective / (lin.in * lin.out)) < 1e-12);
    }
    // Statistics without Gram matrices are refused.
    const diagOnly = seededStats(inputDims(m.cfg), false);
    const p2 = await gptq.plan(m.cfg, m.source, { ...base, gptq: G, stats: diagOnly }, "x");
    await assert.rejects(() => p2.quantizeBlock(gpu, 0), /no Gram matrices/);
  } finally {
    m.index.close();
  }
});

Deno.test("gptq method: its folder loads, decodes and evaluates like an RTN folder", async () => {
  const dir = await Deno.makeTempDir();
  const m = await openModel(KJV);
  try {
    const gpu = await getGpu();
    const base = { work: "unused", cluster: clusterSettings(), rtn: { bits: 4, group: 128 } };
    const stats = seededStats(inputDims(m.cfg));
    const p = await gptq.plan(m.cfg, m.source, { ...base, gptq: G, stats }, "x");
    const units: TensorBytes[][] = [];
    for (let l = 0; l < m.cfg.layers; l++) units.push((await p.quantizeBlock(gpu, l)).tensors);
    const out = join(dir, "gptq");
    await writeCompressedModel(KJV, out, m.cfg, p.quantConfig(), (l) => {
      return Promise.resolve(p.blockTensors(units[l]));
    }, m.index);
    const g = await openModel(out);
    try {
      assert.equal(g.quant?.quant_method, "gptq");
      const lin = linearNames(2, m.cfg).find((l) => l.kind === "down")!;
      const name = lin.name.replace(/\.weight$/, "");
      const t = (s: string) => units[2].find((x) => x.name === `${name}.${s}`)!.data;
      const want = rtnDequantize(
        { q: t("qweight"), scales: bytesToF32(t("scales"), "F16"), zeros: t("zeros") },
        lin.out,
        lin.in,
        G.group,
      );
      assert.deepEqual(await g.source.linearT(2, "down"), transpose(want, lin.out, lin.in));
    } finally {
      g.index.close();
    }
    const dense = join(dir, "dense");
    await dequantize(out, dense, new Progress(true), "F32");
    const e = { text: `${KJV}/heldout.txt`, seqlen: 128, maxWindows: 2 };
    const a = await evaluatePerplexity({ model: out, ...e });
    const b = await evaluatePerplexity({ model: dense, ...e });
    assert.ok(Number.isFinite(a.ppl) && a.ppl > 1, `ppl ${a.ppl}`);
    assert.ok(Math.abs(a.ppl - b.ppl) <= 1e-4 * b.ppl, `runner ${a.ppl} vs dense ${b.ppl}`);
  } finally {
    m.index.close();
    await Deno.remove(dir, { recursive: true });
  }
});
