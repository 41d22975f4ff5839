// Weighted k-means (KmeansOptions.weights): weighted update, objective and kmeans++ against the
// TypeScript reference; weights of 1 give the unweighted run bit for bit; accelerated runs keep
// brute force's codes, on seeded data and on a real matrix with real activation weights.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import {
  kmeans,
  type KmeansOptions,
  pickPoints,
  updateCentroids,
} from "../../src/cluster/kmeans.ts";
import { vectorize } from "../../src/cluster/vectorize.ts";
import { getGpu } from "../../src/gpu/device.ts";
import { SafetensorsIndex } from "../../src/io/safetensors.ts";
import { Tokenizer } from "../../src/io/tokenizer.ts";
import { Rng } from "../../src/util/rng.ts";
import { kmeansRef, objectiveRef, pickPointsRef } from "../reference/kmeans.ts";
import { rmsnormRef } from "../reference/norm.ts";
import { STORIES, WIKI } from "../shared.ts";
import { assertClose } from "../util.ts";
import { assertSameRun, blobs, sameBits } from "./kmeans_data.ts";

/** Log-normal weights spanning ~3 decades, every `zeroEvery`-th one 0. */
function randomWeights(N: number, seed: number, zeroEvery = 0): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from(
    { length: N },
    (_, i) => zeroEvery > 0 && i % zeroEvery === 0 ? 0 : Math.exp(1.5 * rng.normal()),
  );
}

for (const backend of ["gpu", "host"] as const) {
  for (const init of ["random", "kmeans++"] as const) {
    Deno.test(`weights of 1 give the unweighted run bit for bit (${backend}, ${init})`, async () => {
      const gpu = await getGpu();
      const N = 6000, d = 4, n = 300;
      const x = blobs(N, d, 25, 31);
      const opts: KmeansOptions = { iters: 8, seed: 4, backend, init };
      const plain = await kmeans(gpu, x, N, d, n, opts);
      const ones = await kmeans(gpu, x, N, d, n, { ...opts, weights: new Float32Array(N).fill(1) });
      assertSameRun(ones, plain, "weights of 1");
      assert.equal(plain.sse, plain.objective);
    });
  }
}

// GPU (and host) against the f64 reference with weights, some of them 0. Codes may differ only
// at f32 near-ties (as in kmeans.test.ts); centroids within 1e-5 relative.
for (
  const [d, n, N, init] of [
    [4, 200, 5000, "random"],
    [3, 64, 3000, "kmeans++"],
    [8, 120, 4000, "random"],
  ] as const
) {
  Deno.test(`weighted kmeans matches the f64 reference (d=${d}, n=${n}, ${init})`, async () => {
    const gpu = await getGpu();
    const x = blobs(N, d, 30, d * 100 + n);
    const w = randomWeights(N, n, 7);
    const iters = 6;
    const want = kmeansRef(x, N, d, n, iters, 3, init, w);
    for (const backend of ["gpu", "host"] as const) {
      const got = await kmeans(gpu, x, N, d, n, { iters, seed: 3, init, weights: w, backend });
      assert.equal(got.iterations, want.iterations);
      let mismatches = 0;
      for (let i = 0; i < N; i++) {
        if (got.codes[i] === want.codes[i]) continue;
        const near = want.nearest[i], second = want.second[i];
        assert.ok(
          second - near <= 1e-6 * near,
          `${backend} point ${i}: code ${got.codes[i]} != ${want.codes[i]} (${near}, ${second})`,
        );
        mismatches++;
      }
      assert.ok(mismatches <= 2, `${mismatches} near-tie mismatches`);
      assertClose(got.centroids, want.centroids, 1e-6, 1e-5, `${backend} centroids`);
      assert.ok(
        Math.abs(got.objective - want.objective) <= 1e-6 * want.objective,
        `${backend}: objective ${got.objective} vs reference ${want.objective}`,
      );
      const plainSse = objectiveRef(x, N, d, got.centroids, got.codes);
      assert.ok(Math.abs(got.sse - plainSse) <= 1e-9 * plainSse, `${backend}: sse`);
    }
  });
}

Deno.test("weighted kmeans++ draws match the reference, zero weights never drawn", () => {
  const N = 2000, d = 3, n = 50;
  const x = blobs(N, d, 8, 41);
  const w = randomWeights(N, 42, 3);
  const got = pickPoints(x, N, d, n, 5, "kmeans++", w);
  const want = pickPointsRef(x, N, d, n, 5, w);
  assert.ok(sameBits(got, want), "weighted draws differ from the reference");
  // Heavily weighted points: drawn first far more often than uniform sampling would.
  const heavy = new Float32Array(N).fill(1e-6);
  for (let i = 0; i < N; i += 100) heavy[i] = 1;
  let hits = 0;
  for (let s = 0; s < 40; s++) {
    const c = pickPoints(x, N, d, 1, s, "kmeans++", heavy);
    const i = [...Array(N).keys()].find((i) => sameBits(x.subarray(i * d, i * d + d), c))!;
    if (i % 100 === 0) hits++;
  }
  assert.ok(hits >= 36, `first draw hit a heavy point ${hits} of 40 times`);
});

Deno.test("update: weighted means; a cluster of total weight 0 is re-seeded like an empty one", () => {
  // 1-D. Cluster 0: points 0, 1, 2 (weights 1, 3, 0); cluster 1: points 3, 4 (weights 0, 0):
  // total weight 0; cluster 2: empty. Weighted errors against prev: point 0: 1 * 1, point 1:
  // 3 * 4 = 12, point 2: 0, point 3: 0, point 4: 0 -> clusters 1, 2 take points 1, 0.
  const x = new Float32Array([1, 4, 100, 50, 60]);
  const prev = new Float32Array([2, 55, 1000]);
  const codes = new Uint32Array([0, 0, 0, 1, 1]);
  const w = new Float32Array([1, 3, 0, 0, 0]);
  const next = updateCentroids(x, 5, 1, 3, codes, prev, w);
  assert.deepEqual(Array.from(next), [(1 + 12) / 4, 4, 1].map(Math.fround));
  // Unweighted, the same codes give plain means and re-seed only cluster 2 (error 98^2).
  assert.deepEqual(
    Array.from(updateCentroids(x, 5, 1, 3, codes, prev)),
    [105 / 3, 55, 100].map(Math.fround),
  );
});

for (const backend of ["gpu", "host"] as const) {
  Deno.test(`weighted accelerated codes equal brute force, zero-weight clusters (${backend})`, async () => {
    const gpu = await getGpu();
    // Few distinct values (re-seeding every iteration) and a block of zero weights.
    const d = 4, n = 500, N = 8000;
    const rng = new Rng(51);
    const distinct = blobs(700, d, 9, 52);
    const x = new Float32Array(N * d);
    for (let i = 0; i < N; i++) {
      const v = rng.int(700);
      x.set(distinct.subarray(v * d, v * d + d), i * d);
    }
    const w = randomWeights(N, 53, 5);
    w.fill(0, 0, 1500);
    for (const init of ["random", "kmeans++"] as const) {
      const opts: KmeansOptions = { iters: 8, seed: 6, weights: w, init };
      const fast = await kmeans(gpu, x, N, d, n, { ...opts, backend });
      const slow = await kmeans(gpu, x, N, d, n, { ...opts, accelerate: false, backend: "gpu" });
      assertSameRun(fast, slow, `${backend} ${init}`);
      assert.ok(fast.distanceEvals < slow.distanceEvals);
    }
  });
}

Deno.test("bad weights are refused with one clear error", async () => {
  const gpu = await getGpu();
  const N = 100, d = 2, n = 4;
  const x = blobs(N, d, 3, 61);
  const bad: [Float32Array, RegExp][] = [
    [new Float32Array(N - 1).fill(1), /weights must be a Float32Array of N = 100/],
    [new Float32Array(N).fill(1).fill(-1, 7, 8), /weights\[7\] = -1/],
    [new Float32Array(N).fill(1).fill(NaN, 9, 10), /weights\[9\] = NaN/],
    [new Float32Array(N).fill(1).fill(Infinity, 3, 4), /weights\[3\] = Infinity/],
  ];
  for (const [weights, msg] of bad) {
    await assert.rejects(kmeans(gpu, x, N, d, n, { weights, backend: "host" }), msg);
  }
});

/**
 * diag(X^T X) of layer 0's attention input on stories260K: the embedding rows of the first
 * `tokens` tokens of wiki.test.raw, RMS-normalised with input_layernorm (f64 sums, f32 out).
 */
async function layer0InputMoments(tokens: number): Promise<Float64Array> {
  const tok = await Tokenizer.load(STORIES);
  const ids = tok.encode((await Deno.readTextFile(WIKI)).slice(0, 40_000)).subarray(0, tokens);
  assert.equal(ids.length, tokens);
  const index = await SafetensorsIndex.open(STORIES);
  const emb = await index.readF32("model.embed_tokens.weight");
  const g = await index.readF32("model.layers.0.input_layernorm.weight");
  index.close();
  const cfg = JSON.parse(await Deno.readTextFile(`${STORIES}/config.json`));
  const H = cfg.hidden_size as number, T = ids.length;
  const xT = new Float32Array(H * T); // feature-major, as rmsnormRef wants
  for (let t = 0; t < T; t++) for (let h = 0; h < H; h++) xT[h * T + t] = emb[ids[t] * H + h];
  const y = rmsnormRef(xT, g, H, T, cfg.rms_norm_eps);
  const m = new Float64Array(H);
  for (let h = 0; h < H; h++) for (let t = 0; t < T; t++) m[h] += y[h * T + t] ** 2;
  return m;
}

Deno.test({
  name: "real matrix, real activation weights: stories260K layer 0 q_proj (d=4, n=64)",
  ignore: !existsSync(`${STORIES}/model.safetensors`) || !existsSync(WIKI),
  fn: async () => {
    const gpu = await getGpu();
    const moments = await layer0InputMoments(4096);
    const index = await SafetensorsIndex.open(STORIES);
    const name = "model.layers.0.self_attn.q_proj.weight";
    const [out, inDim] = index.info(name).shape;
    const wq = await index.readF32(name);
    index.close();
    const d = 4, n = 64;
    const { x, N } = vectorize(wq, out, inDim, d);
    // Vector r * cols + b holds W^T[r, b d .. b d + d): input feature r's second moment.
    const cols = Math.ceil(out / d);
    const weights = Float32Array.from({ length: N }, (_, i) => moments[Math.floor(i / cols)]);
    assert.ok(Math.max(...weights) > 2 * Math.min(...weights), "the moments differ by feature");
    const iters = 20;
    const objs: number[] = [];
    const opts: KmeansOptions = { iters, seed: 1, weights };
    const fast = await kmeans(gpu, x, N, d, n, {
      ...opts,
      backend: "gpu",
      onIter: (_, o) => objs.push(o),
    });
    const slow = await kmeans(gpu, x, N, d, n, { ...opts, accelerate: false, backend: "gpu" });
    assertSameRun(fast, slow, "weighted q_proj, GPU");
    assert.ok(fast.distanceEvals < slow.distanceEvals);
    const host = await kmeans(gpu, x, N, d, n, { ...opts, backend: "host" });
    assertSameRun(host, slow, "weighted q_proj, host");
    const tree = await kmeans(gpu, x, N, d, n, { ...opts, backend: "gpu", pruning: "tree" });
    assertSameRun(tree, slow, "weighted q_proj, k-d tree");
    // Lloyd with weighted means never raises the weighted objective (up to f32 rounding).
    for (let i = 1; i < objs.length; i++) {
      assert.ok(objs[i] <= objs[i - 1] * (1 + 1e-6), `iteration ${i}: ${objs[i]} > ${objs[i - 1]}`);
    }
    // Against the f64 reference with the same weights.
    const want = kmeansRef(x, N, d, n, iters, 1, "random", weights);
    assertClose(fast.centroids, want.centroids, 1e-6, 1e-4, "weighted q_proj centroids");
    assert.ok(Math.abs(fast.objective - want.objective) <= 1e-5 * want.objective);
    // The unweighted run, scored by the weighted objective (printed; neither run is a global
    // optimum, so which is lower is measured, not asserted).
    const plain = await kmeans(gpu, x, N, d, n, { iters, seed: 1, backend: "gpu" });
    const plainW = objectiveRef(x, N, d, plain.centroids, plain.codes, weights);
    console.log(
      `q_proj weighted objective: weighted run ${fast.objective.toExponential(4)}, ` +
        `unweighted run ${plainW.toExponential(4)}; plain sse ${fast.sse.toExponential(4)} vs ` +
        `${plain.sse.toExponential(4)}`,
    );
  },
});
