// Token sampling: greedy, temperature, top-k, top-p, determinism.
import assert from "node:assert/strict";
import { argmax, candidates, sampleToken } from "../../src/model/sample.ts";
import { Rng } from "../../src/util/rng.ts";
import { randomF32 } from "../util.ts";

const GREEDY = { temperature: 0, topK: 0, topP: 1 };

function softmax(logits: ArrayLike<number>, t: number): number[] {
  let m = -Infinity;
  for (let i = 0; i < logits.length; i++) m = Math.max(m, logits[i]);
  const e = Array.from(logits, (x) => Math.exp((x - m) / t));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}

Deno.test("greedy is argmax, ties go to the lowest id", () => {
  const rng = new Rng(1);
  assert.equal(sampleToken(new Float32Array([0.1, 3, -2, 3, 2.9]), GREEDY, rng), 1);
  assert.equal(sampleToken(new Float32Array([5, 5, 5]), GREEDY, rng), 0);
  assert.equal(sampleToken(new Float32Array([-1, -3, -0.5]), GREEDY, rng), 2);
  assert.equal(argmax(new Float32Array([NaN, -1, NaN, 2, 2])), 3);
  // A planted maximum at the far end of a long row
  const big = randomF32(50_000, 3);
  big[49_999] = 10;
  assert.equal(sampleToken(big, GREEDY, rng), 49_999);
});

Deno.test("top-k 1 and a tiny top-p are greedy at any temperature", () => {
  for (let seed = 0; seed < 20; seed++) {
    const logits = randomF32(300, seed, -3, 3);
    const want = argmax(logits);
    const rng = new Rng(seed);
    for (const temperature of [0.1, 1, 5, 100]) {
      for (let i = 0; i < 10; i++) {
        assert.equal(sampleToken(logits, { temperature, topK: 1, topP: 1 }, rng), want);
        assert.equal(sampleToken(logits, { temperature, topK: 0, topP: 1e-9 }, rng), want);
      }
    }
  }
});

Deno.test("temperature 1 draws match the softmax", () => {
  const logits = new Float32Array([1, 0, -1, 2, 0.5, -3, 1.5, 0]);
  const p = softmax(logits, 1);
  const n = 200_000;
  const counts = new Array(logits.length).fill(0);
  const rng = new Rng(42);
  const s = { temperature: 1, topK: 0, topP: 1 };
  for (let i = 0; i < n; i++) counts[sampleToken(logits, s, rng)]++;
  for (let j = 0; j < p.length; j++) {
    const sd = Math.sqrt((p[j] * (1 - p[j])) / n);
    assert.ok(
      Math.abs(counts[j] / n - p[j]) < 5 * sd + 1e-4,
      `token ${j}: frequency ${counts[j] / n} vs p ${p[j]}`,
    );
  }
});

Deno.test("temperature 0.5 sharpens: frequencies follow softmax(logits / 0.5)", () => {
  const logits = new Float32Array([0, 0.5, 1]);
  const p = softmax(logits, 0.5);
  const n = 100_000;
  const counts = [0, 0, 0];
  const rng = new Rng(7);
  for (let i = 0; i < n; i++) {
    counts[sampleToken(logits, { temperature: 0.5, topK: 0, topP: 1 }, rng)]++;
  }
  for (let j = 0; j < 3; j++) {
    const sd = Math.sqrt((p[j] * (1 - p[j])) / n);
    assert.ok(Math.abs(counts[j] / n - p[j]) < 5 * sd, `token ${j}: ${counts[j] / n} vs ${p[j]}`);
  }
});

Deno.test("top-k and top-p keep the right set, renormalised", () => {
  // probabilities 0.4, 0.3, 0.2, 0.1 (ids 2, 0, 3, 1)
  const logits = new Float32Array([0.3, 0.1, 0.4, 0.2].map(Math.log));
  const k2 = candidates(logits, { temperature: 1, topK: 2, topP: 1 });
  assert.deepEqual(k2.ids, [2, 0]);
  assert.ok(Math.abs(k2.probs[0] - 4 / 7) < 1e-6);
  // smallest set with mass >= 0.65: {2, 0} (0.7)
  assert.deepEqual(candidates(logits, { temperature: 1, topK: 0, topP: 0.65 }).ids, [2, 0]);
  assert.deepEqual(candidates(logits, { temperature: 1, topK: 0, topP: 0.39 }).ids, [2]);
  assert.deepEqual(candidates(logits, { temperature: 1, topK: 0, topP: 0.71 }).ids, [2, 0, 3]);
  assert.deepEqual(candidates(logits, { temperature: 1, topK: 0, topP: 1 }).ids, [2, 0, 3, 1]);
  // top-k then top-p on the renormalised top-k mass: top-3 = 0.4/0.9, 0.3/0.9, 0.2/0.9
  assert.deepEqual(candidates(logits, { temperature: 1, topK: 3, topP: 0.75 }).ids, [2, 0]);
  assert.deepEqual(candidates(logits, { temperature: 1, topK: 3, topP: 0.8 }).ids, [2, 0, 3]);
  const sum = candidates(logits, { temperature: 1, topK: 3, topP: 0.8 }).probs.reduce(
    (a, b) => a + b,
  );
  assert.ok(Math.abs(sum - 1) < 1e-12);
});

/** Plain reference: sort everything, cut top-k, then top-p over the renormalised top-k. */
function reference(logits: Float32Array, t: number, k: number, p: number): number[] {
  const prob = softmax(logits, t);
  const order = Array.from(logits.keys()).sort((a, b) => prob[b] - prob[a] || a - b);
  let kept = k > 0 ? order.slice(0, k) : order;
  const mass = kept.reduce((a, i) => a + prob[i], 0);
  if (p < 1) {
    let acc = 0;
    let j = 0;
    while (j < kept.length) {
      acc += prob[kept[j++]];
      if (acc >= p * mass) break;
    }
    kept = kept.slice(0, j);
  }
  return kept;
}

Deno.test("candidates match a sort-everything reference, ties included", () => {
  const rng = new Rng(21);
  for (let trial = 0; trial < 300; trial++) {
    const n = 1 + rng.int(3000);
    // quantized logits: many ties
    const logits = Float32Array.from({ length: n }, () => Math.round(rng.normal() * 4) / 2);
    const k = [0, 1, 2, 7, 50, n, n + 3][rng.int(7)];
    const p = [1, 0.999, 0.9, 0.5, 0.1][rng.int(5)];
    const t = [0.3, 1, 2.5][rng.int(3)];
    const got = candidates(logits, { temperature: t, topK: k, topP: p }).ids;
    const want = reference(logits, t, k, p);
    assert.deepEqual(got, want, `trial ${trial}: n ${n} k ${k} p ${p} t ${t}`);
  }
});

Deno.test("a token outside top-k / top-p is never drawn", () => {
  const logits = randomF32(64, 11, -2, 2);
  const order = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a]);
  const rng = new Rng(5);
  const top5 = new Set(order.slice(0, 5));
  const seenK = new Set<number>();
  for (let i = 0; i < 20_000; i++) {
    const id = sampleToken(logits, { temperature: 2, topK: 5, topP: 1 }, rng);
    assert.ok(top5.has(id), `drew ${id} outside the top 5`);
    seenK.add(id);
  }
  assert.equal(seenK.size, 5, "every top-5 token is drawn at temperature 2");
  const p = softmax(logits, 1);
  const nucleus = new Set<number>();
  let mass = 0;
  for (const id of order) {
    nucleus.add(id);
    mass += p[id];
    if (mass >= 0.5) break;
  }
  for (let i = 0; i < 20_000; i++) {
    const id = sampleToken(logits, { temperature: 1, topK: 0, topP: 0.5 }, rng);
    assert.ok(nucleus.has(id), `drew ${id} outside the 0.5 nucleus`);
  }
});

Deno.test("-inf logits are never drawn; +inf takes all the mass", () => {
  const rng = new Rng(9);
  const masked = new Float32Array([-Infinity, 0, -Infinity, 0.1]);
  for (let i = 0; i < 1000; i++) {
    const id = sampleToken(masked, { temperature: 3, topK: 0, topP: 1 }, rng);
    assert.ok(id === 1 || id === 3);
  }
  const inf = new Float32Array([0, Infinity, 5]);
  assert.equal(sampleToken(inf, { temperature: 1, topK: 0, topP: 1 }, rng), 1);
});

Deno.test("the same seed gives the same stream; another seed another", () => {
  const logits = randomF32(1000, 2, -1, 1);
  const s = { temperature: 1, topK: 50, topP: 0.9 };
  const draw = (seed: number) => {
    const rng = new Rng(seed);
    return Array.from({ length: 200 }, () => sampleToken(logits, s, rng));
  };
  assert.deepEqual(draw(123), draw(123));
  assert.notDeepEqual(draw(123), draw(124));
});
