// The bit planner (src/cluster/plan.ts) on the embedded fixtures/kjv-llama's shapes (no
// ../shared): the bits formula, the choice of (d, n) under a --bits budget, and refusals.
import assert from "node:assert/strict";
import {
  type ClusterSettings,
  largestN,
  matrixBits,
  MAX_D,
  planMatrices,
  searchD,
  validatePair,
} from "../../src/cluster/plan.ts";
import { UserError } from "../../src/errors.ts";
import { linearNames, loadConfig } from "../../src/io/config.ts";
import { clusterSettings } from "../settings.ts";

const KJV = new URL("../../fixtures/kjv-llama", import.meta.url).pathname;

const settings = clusterSettings;

const close = (a: number, b: number, what: string) =>
  assert.ok(Math.abs(a - b) <= 1e-12 * Math.max(1, Math.abs(b)), `${what}: ${a} vs ${b}`);

Deno.test("plan: matrixBits counts log2 n per d-vector (padding included) plus the codebook", () => {
  // down_proj of kjv-llama: W [128, 384], W^T [384, 128]; d = 3 pads 128 to 129 (43 vectors).
  const out = 128, inDim = 384;
  const b = matrixBits(out, inDim, 3, 1000, 1);
  close(b.codeBits, Math.log2(1000) * inDim * 43 / (out * inDim), "code bits");
  close(b.codebookBits, 16 * 1000 * 3 / (out * inDim), "codebook bits");
  close(b.storedBits, 10 * inDim * 43 / (out * inDim) + b.codebookBits, "stored bits");
  assert.equal(b.pad, 1);
  // Two codebooks cost twice the codebook bits and nothing more.
  const s2 = matrixBits(out, inDim, 3, 1000, 2);
  close(s2.codebookBits, 2 * b.codebookBits, "split codebook bits");
  close(s2.codeBits, b.codeBits, "split code bits");
  // A power of two: stored equals counted; d = 4 divides 128, no padding.
  const p = matrixBits(out, inDim, 4, 256, 1);
  close(p.codeBits, 8 / 4, "8-bit codes over d = 4");
  close(p.storedBits, p.codeBits + p.codebookBits, "stored = counted");
  assert.equal(p.pad, 0);
});

Deno.test("plan: largestN is the largest n within the budget as stored", () => {
  for (const [out, inDim, d, target] of [[128, 128, 2, 2], [384, 128, 4, 2.5], [128, 384, 3, 3]]) {
    const n = largestN(out, inDim, d, 1, target);
    const total = (k: number) => matrixBits(out, inDim, d, k, 1).storedBits;
    assert.ok(n >= 2 && total(n) <= target, `n = ${n} over ${target}`);
    assert.ok(total(n + 1) > target, `n + 1 = ${n + 1} still fits ${target}`);
  }
  // Even n = 2 does not fit a tiny budget.
  assert.equal(largestN(128, 128, 2, 1, 0.1), 0);
});

Deno.test("plan: a --bits target picks (d, n) per matrix within the budget", async () => {
  const cfg = await loadConfig(KJV);
  const lins = linearNames(0, cfg);
  for (const bits of [2, 3]) {
    const plans = await planMatrices(cfg, settings({ bits }));
    assert.deepEqual(plans.map((p) => p.kind), lins.map((l) => l.kind));
    for (const p of plans) {
      // The budget holds for the folder as stored, and stored = ideal when n is a power of two.
      assert.ok(p.storedBits <= bits + 1e-12, `${p.kind}: stored ${p.storedBits} > ${bits}`);
      if (Number.isInteger(Math.log2(p.n))) {
        assert.ok(Math.abs(p.storedBits - p.totalBits) < 1e-9, `${p.kind}: stored != ideal`);
      }
      // Closest to the target: n is the largest that fits for its d.
      assert.equal(p.n, largestN(p.out, p.in, p.d, 1, bits), `${p.kind}: n not the largest`);
      assert.ok(p.storedBits > bits - 0.5, `${p.kind}: ${p.storedBits} far below ${bits}`);
    }
  }
  // A given d is kept; an override wins for its kind.
  const fixed = await planMatrices(cfg, settings({ bits: 2, d: 4, overrides: { q: { d: 2 } } }));
  for (const p of fixed) assert.equal(p.d, p.kind === "q" ? 2 : 4);
  // With a sample error, the pair of lowest error is chosen (here d = 6 by construction).
  const ranked = await planMatrices(
    cfg,
    settings({ bits: 2 }),
    (_k, d) => Promise.resolve(Math.abs(d - 6) + 1),
  );
  for (const p of ranked) {
    assert.equal(p.d, 6);
    assert.ok(p.totalBits <= 2 + 1e-12);
  }
});

Deno.test("plan: validatePair and planMatrices refuse bad settings with a UserError", async () => {
  const bad: [number, number, number, RegExp][] = [
    [0, 16, 1, /d must be an integer >= 1/],
    [1.5, 16, 1, /d must be an integer >= 1/],
    [MAX_D + 1, 16, 1, /d = 17 is larger than 16/],
    [2, 1, 1, /n must be an integer >= 2/],
    [2, 70000, 1, /n = 70000 exceeds 65536/],
    [2, 16, 3, /--splits 3 does not divide the 128 input rows/],
    [4, 5000, 1, /n = 5000 is larger than the 4096 vectors of dimension 4/],
  ];
  for (const [d, n, splits, want] of bad) {
    assert.throws(() => validatePair("q", 128, 128, d, n, splits), (e: Error) => {
      assert.ok(e instanceof UserError, `${e}`);
      assert.match(e.message, want);
      return true;
    });
  }
  validatePair("q", 128, 128, MAX_D, 16, 2);
  const cfg = await loadConfig(KJV);
  const refusals: [Partial<ClusterSettings>, RegExp][] = [
    [{}, /give --bits B, or both --d and --n/],
    [{ d: 2 }, /give --bits B, or both --d and --n/],
    [{ bits: 0 }, /--bits must be > 0/],
    [{ bits: 0.01 }, /no \(d, n\) fits 0.01 bits per weight for q/],
    [{ d: 20, n: 16 }, /--d must be an integer from 1 to 16 \(got 20\)/],
    [{ bits: 2, overrides: { down: { d: 17 } } }, /--override down:d must be .* \(got 17\)/],
  ];
  for (const [s, want] of refusals) {
    await assert.rejects(planMatrices(cfg, settings(s)), (e: Error) => {
      assert.ok(e instanceof UserError, `${e}`);
      assert.match(e.message, want);
      return true;
    });
  }
});

Deno.test("plan: searchD finds the lowest sample error of a valley in d with fewer runs", async () => {
  const candidates = Array.from({ length: 10 }, (_, i) => ({ d: i + 1, n: 16 }));
  for (const best of [1, 3, 6, 10]) {
    let runs = 0;
    const r = await searchD(candidates, (c) => {
      runs++;
      return Promise.resolve((c.d - best) ** 2 + 1);
    });
    assert.equal(r[0].d, best, `valley at d = ${best}`);
    assert.ok(runs <= 8, `${runs} sample runs (of 10 candidates) for a valley at d = ${best}`);
    assert.deepEqual(r.map((e) => e.mse), [...r.map((e) => e.mse)].sort((a, b) => a - b));
  }
  // Only some candidates (e.g. d = 3 only): that one.
  const one = await searchD([{ d: 3, n: 64 }], () => Promise.resolve(1));
  assert.deepEqual(one.map((e) => e.d), [3]);
});
