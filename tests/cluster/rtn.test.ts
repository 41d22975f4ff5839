// The RTN quantizer (src/cluster/rtn.ts) on a real matrix of the embedded fixtures/kjv-llama
// (no ../shared): shapes, code range, round-trip error per element, bits accounting, refusals.
import assert from "node:assert/strict";
import { rtnBits, rtnDequantize, rtnQuantize } from "../../src/cluster/rtn.ts";
import { UserError } from "../../src/errors.ts";
import { linearNames, loadConfig } from "../../src/io/config.ts";
import { SafetensorsIndex } from "../../src/io/safetensors.ts";

const KJV = new URL("../../fixtures/kjv-llama", import.meta.url).pathname;

/** [out, in] weights of block 0's linears of a kind. */
async function weight(kind: string): Promise<{ w: Float32Array; out: number; inDim: number }> {
  const cfg = await loadConfig(KJV);
  const lin = linearNames(0, cfg).find((l) => l.kind === kind)!;
  const idx = await SafetensorsIndex.open(KJV);
  try {
    return { w: await idx.readF32(lin.name), out: lin.out, inDim: lin.in };
  } finally {
    idx.close();
  }
}

Deno.test("rtn: shapes, codes in range, and per-element error within scale / 2", async () => {
  // down_proj: in = 384, so group 128 gives 3 groups and group 100 a short last group.
  const { w, out, inDim } = await weight("down");
  for (const [bits, group] of [[2, 32], [3, 128], [4, 100], [8, 128]]) {
    const r = rtnQuantize(w, out, inDim, bits, group);
    const groups = Math.ceil(inDim / group), qmax = 2 ** bits - 1;
    assert.equal(r.q.length, out * inDim);
    assert.equal(r.scales.length, out * groups);
    assert.equal(r.zeros.length, out * groups);
    assert.ok(r.q.every((v) => v <= qmax), "codes < 2^bits");
    assert.ok(r.zeros.every((v) => v <= qmax), "zeros < 2^bits");
    assert.ok(r.scales.every((s) => s > 0 && Math.f16round(s) === s), "fp16 scales > 0");
    const back = rtnDequantize(r, out, inDim, group);
    let worst = 0;
    for (let row = 0; row < out; row++) {
      for (let c = 0; c < inDim; c++) {
        const s = r.scales[row * groups + Math.floor(c / group)];
        // scale / 2 from rounding, plus the fp16 rounding of the scale (relative 2^-11) over the
        // qmax steps of the range.
        const bound = s / 2 + qmax * s * 2 ** -11 + 1e-7;
        const err = Math.abs(back[row * inDim + c] - w[row * inDim + c]);
        worst = Math.max(worst, err / s);
        assert.ok(err <= bound, `bits ${bits} group ${group} [${row},${c}]: ${err} > ${bound}`);
      }
    }
    // The rounding really is to nearest: some element is off by nearly half a step.
    assert.ok(worst > 0.4, `bits ${bits}: worst error ${worst} steps`);
  }
});

Deno.test("rtn: a matrix already on the grid round-trips exactly", () => {
  const out = 3, inDim = 16, group = 8;
  // Each group spans [-2, 5] * 0.25: scale 0.25 (exact in fp16) at 3 bits, zero 2.
  const w = Float32Array.from({ length: out * inDim }, (_, i) => ((i * 5 % 8) - 2) * 0.25);
  const r = rtnQuantize(w, out, inDim, 3, group);
  assert.deepEqual(rtnDequantize(r, out, inDim, group), w);
});

Deno.test("rtn: bits per weight count codes plus an fp16 scale and a b-bit zero per group", () => {
  assert.equal(rtnBits(4, 128, 128), 4 + 20 / 128);
  assert.equal(rtnBits(3, 128, 384), 3 + (3 * 19) / 384);
  // A short last group still costs a whole scale and zero.
  assert.equal(rtnBits(2, 100, 384), 2 + (4 * 18) / 384);
  assert.equal(rtnBits(8, 1, 16), 8 + 24);
});

Deno.test("rtn: bits outside 1..8 and a group below 1 are refused", () => {
  const w = new Float32Array(8);
  for (const bits of [0, 9, 2.5]) {
    assert.throws(() => rtnQuantize(w, 1, 8, bits, 4), UserError);
  }
  assert.throws(() => rtnQuantize(w, 1, 8, 4, 0), UserError);
});
