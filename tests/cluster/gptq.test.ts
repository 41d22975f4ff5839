// GPTQ (src/cluster/gptq.ts) against the plain column-by-column reference (tests/reference/gptq.ts):
// the same codes, scales and zeros byte for byte, on seeded and real layers, act-order on and off,
// groups inside a lazy batch, across two and of a size that does not divide 128; the output error
// on the calibration inputs below RTN's at the same bits and group; a diagonal Hessian gives RTN's
// codes exactly; bad settings and a singular Hessian are refused.
import assert from "node:assert/strict";
import { type GptqOptions, gptqQuantize, hessianFactor } from "../../src/cluster/gptq.ts";
import { rtnDequantize, rtnQuantize, type RtnResult } from "../../src/cluster/rtn.ts";
import { UserError } from "../../src/errors.ts";
import { inputOf, layerStats } from "../../src/cluster/stats.ts";
import { openModel } from "../../src/format/open.ts";
import { getGpu } from "../../src/gpu/device.ts";
import { linearNames } from "../../src/io/config.ts";
import { readText } from "../../src/io/text.ts";
import { Tokenizer } from "../../src/io/tokenizer.ts";
import { transpose } from "../../src/util/matrix.ts";
import { gptqReference } from "../reference/gptq.ts";
import { HAS_SHARED, STORIES, TINYSTORIES } from "../shared.ts";
import { randomF32 } from "../util.ts";
import { gramOf, outputError, realLayer, seededInputs } from "./gptq_data.ts";

const KJV = new URL("../../fixtures/kjv-llama", import.meta.url).pathname;

async function gptq(
  w: Float32Array,
  out: number,
  n: number,
  gram: Float32Array,
  tokens: number,
  o: GptqOptions,
): Promise<RtnResult> {
  const f = hessianFactor(gram, n, tokens, o);
  return await gptqQuantize(await getGpu(), transpose(w, out, n), n, out, f, o);
}

/** Equal arrays, or an error naming the first differences. */
function same(got: ArrayLike<number>, want: ArrayLike<number>, label: string): void {
  assert.equal(got.length, want.length, `${label}: length`);
  const bad: string[] = [];
  let count = 0;
  for (let i = 0; i < got.length; i++) {
    if (got[i] !== want[i]) {
      if (bad.length < 8) bad.push(`[${i}] got ${got[i]} want ${want[i]}`);
      count++;
    }
  }
  if (count > 0) throw new Error(`${label}: ${count} of ${got.length} differ: ${bad.join(", ")}`);
}

/** Checks the implementation against the reference and against RTN's output error. */
async function check(
  label: string,
  w: Float32Array,
  out: number,
  n: number,
  x: Float32Array,
  tokens: number,
  o: GptqOptions,
) {
  const gram = gramOf(x, tokens, n);
  const got = await gptq(w, out, n, gram, tokens, o);
  const want = gptqReference(w, out, n, gram, tokens, o);
  const tag = `${label} bits ${o.bits} group ${o.group} act-order ${o.actOrder}`;
  same(got.q, want.q, `${tag}: qweight`);
  same(got.scales, want.scales, `${tag}: scales`);
  same(got.zeros, want.zeros, `${tag}: zeros`);
  const rtn = rtnQuantize(w, out, n, o.bits, o.group);
  const eG = outputError(w, rtnDequantize(got, out, n, o.group), out, n, gram);
  const eR = outputError(w, rtnDequantize(rtn, out, n, o.group), out, n, gram);
  console.log(`${tag}: ||XW^T - XWq^T||^2 gptq ${eG.toExponential(4)} rtn ${eR.toExponential(4)}`);
  assert.ok(eG < eR, `${tag}: GPTQ's output error ${eG} is not below RTN's ${eR}`);
  return { eG, eR };
}

Deno.test("gptq: seeded layer, same codes as the reference and below RTN", async () => {
  const out = 40, n = 320, tokens = 600;
  const x = seededInputs(tokens, n, 11, [5, 200]); // two dead inputs
  const w = randomF32(out * n, 12, -0.5, 0.5);
  const cases: Omit<GptqOptions, "damp">[] = [
    { bits: 3, group: 64, actOrder: false }, // groups start inside a lazy batch
    { bits: 3, group: 256, actOrder: false }, // a group spans two batches
    { bits: 4, group: 100, actOrder: false }, // batches of 100, a short last group
    { bits: 4, group: 128, actOrder: true },
    { bits: 2, group: 32, actOrder: true },
  ];
  for (const c of cases) await check("seeded", w, out, n, x, tokens, { ...c, damp: 0.01 });
  // Dead inputs: their weights are zeroed (code = zero point).
  const got = await gptq(w, out, n, gramOf(x, tokens, n), tokens, {
    bits: 3,
    group: 64,
    actOrder: true,
    damp: 0.01,
  });
  const back = rtnDequantize(got, out, n, 64);
  for (let r = 0; r < out; r++) assert.equal(back[r * n + 5], 0, `row ${r}: dead input 5`);
});

Deno.test("gptq: a diagonal Hessian gives RTN's codes exactly", async () => {
  const out = 24, n = 192, tokens = 300;
  const x = seededInputs(tokens, n, 3);
  const gram = gramOf(x, tokens, n);
  for (let a = 0; a < n; a++) for (let b = 0; b < n; b++) if (a !== b) gram[a * n + b] = 0;
  const w = randomF32(out * n, 4, -1, 1);
  for (const actOrder of [false, true]) {
    const o = { bits: 3, group: 48, actOrder, damp: 0.01 };
    const got = await gptq(w, out, n, gram, tokens, o);
    const rtn = rtnQuantize(w, out, n, o.bits, o.group);
    same(got.q, rtn.q, `act-order ${actOrder}: qweight`);
    same(got.scales, rtn.scales, `act-order ${actOrder}: scales`);
    same(got.zeros, rtn.zeros, `act-order ${actOrder}: zeros`);
  }
});

Deno.test("gptq: real block-0 layers of kjv-llama on real text", async () => {
  for (const name of ["q_proj", "up_proj"]) {
    const proj = name === "q_proj" ? "self_attn" : "mlp";
    const l = await realLayer(
      KJV,
      `${KJV}/calib.txt`,
      512,
      `model.layers.0.${proj}.${name}.weight`,
    );
    for (const actOrder of [false, true]) {
      await check(`kjv ${name}`, l.w, l.out, l.n, l.x, 512, {
        bits: 3,
        group: 32,
        actOrder,
        damp: 0.01,
      });
    }
  }
});

Deno.test("gptq: kjv-llama block 1 with Hessians from the stats stage on real text", async () => {
  // o_proj and down_proj (384 inputs: three lazy batches, so the GPU trailing updates run).
  const m = await openModel(KJV);
  try {
    const ids = (await Tokenizer.load(KJV)).encode(await readText(`${KJV}/calib.txt`));
    const windows = Array.from({ length: 8 }, (_, i) => ids.slice(i * 64, (i + 1) * 64));
    const gpu = await getGpu();
    const s = await layerStats({ gpu, cfg: m.cfg, src: m.source, windows }, 1, true);
    assert.equal(s.tokens, 8 * 64);
    for (const lin of linearNames(1, m.cfg).filter((l) => l.kind === "o" || l.kind === "down")) {
      const w = transpose(await m.source.linearT(1, lin.kind), lin.in, lin.out);
      const gram = s.gram![inputOf(lin.kind)];
      for (const actOrder of [false, true]) {
        const o = { bits: 3, group: 64, actOrder, damp: 0.01 };
        const got = await gptq(w, lin.out, lin.in, gram, s.tokens, o);
        const want = gptqReference(w, lin.out, lin.in, gram, s.tokens, o);
        const tag = `kjv ${lin.kind} act-order ${actOrder}`;
        same(got.q, want.q, `${tag}: qweight`);
        same(got.scales, want.scales, `${tag}: scales`);
        same(got.zeros, want.zeros, `${tag}: zeros`);
        const rtn = rtnQuantize(w, lin.out, lin.in, o.bits, o.group);
        const eG = outputError(w, rtnDequantize(got, lin.out, lin.in, 64), lin.out, lin.in, gram);
        const eR = outputError(w, rtnDequantize(rtn, lin.out, lin.in, 64), lin.out, lin.in, gram);
        console.log(
          `${tag}: ||XW^T - XWq^T||^2 gptq ${eG.toExponential(4)} rtn ${eR.toExponential(4)}`,
        );
        assert.ok(eG < eR, `${tag}: GPTQ's output error ${eG} is not below RTN's ${eR}`);
      }
    }
  } finally {
    m.index.close();
  }
});

Deno.test({
  name: "gptq: real block-0 layers of stories260K on TinyStories",
  ignore: !HAS_SHARED,
  fn: async () => {
    for (const name of ["q_proj", "gate_proj"]) {
      const proj = name === "q_proj" ? "self_attn" : "mlp";
      const l = await realLayer(STORIES, TINYSTORIES, 512, `model.layers.0.${proj}.${name}.weight`);
      for (const [bits, actOrder] of [[2, false], [2, true], [4, false], [4, true]] as const) {
        await check(`stories260K ${name}`, l.w, l.out, l.n, l.x, 512, {
          bits,
          group: 32,
          actOrder,
          damp: 0.01,
        });
      }
    }
  },
});

Deno.test("gptq: bad settings and a singular Hessian are refused", async () => {
  const out = 4, n = 16, tokens = 3; // 3 tokens: rank 3 < 16
  const x = seededInputs(tokens, n, 5);
  const gram = gramOf(x, tokens, n);
  const w = randomF32(out * n, 6);
  await assert.rejects(
    () => gptq(w, out, n, gram, tokens, { bits: 9, group: 8, actOrder: false, damp: 0.01 }),
    (e: Error) => e instanceof UserError && /--bits/.test(e.message),
  );
  await assert.rejects(
    () => gptq(w, out, n, gram, tokens, { bits: 3, group: 0, actOrder: false, damp: 0.01 }),
    (e: Error) => e instanceof UserError && /--group/.test(e.message),
  );
  assert.throws(
    () => hessianFactor(gram, n, tokens, { actOrder: false, damp: 0 }, "model.layers.0 attn"),
    (e: Error) =>
      e instanceof UserError && /not positive definite/.test(e.message) &&
      /--damp/.test(e.message) && /model.layers.0 attn/.test(e.message),
  );
  assert.throws(() => hessianFactor(gram.subarray(1), n, tokens, { actOrder: false, damp: 0 }));
  // With damping the same Hessian factors.
  hessianFactor(gram, n, tokens, { actOrder: false, damp: 0.01 });
});
