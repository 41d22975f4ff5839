import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import {
  assignNearest,
  initCentroids,
  kmeans,
  kmeansGpuBytes,
  updateCentroids,
  usesTree,
} from "../../src/cluster/kmeans.ts";
import { decodeT, vectorize } from "../../src/cluster/vectorize.ts";
import { getGpu } from "../../src/gpu/device.ts";
import { SafetensorsIndex } from "../../src/io/safetensors.ts";
import { Rng } from "../../src/util/rng.ts";
import { kmeansRef } from "../reference/kmeans.ts";
import { TINYLLAMA } from "../shared.ts";
import { assertClose } from "../util.ts";
import { assertSameRun, blobs, sameBits } from "./kmeans_data.ts";

/** N points of dimension d around `blobs` seeded centres (clustered, like real codebooks). */

// GPU vs the f64 reference. Codes must agree except where the reference's two nearest squared
// distances are within 1e-6 relative (an f32 near-tie); centroids within 1e-5 relative.
// [4, 1500, 6000] assigns through the k-d tree ("auto" pruning), the others through Yinyang.
const REFERENCE_CASES = [
  [1, 100, 3000],
  [4, 1000, 6000],
  [4, 1500, 6000],
  [6, 100, 3000],
  [9, 1000, 4000],
];
for (const [d, n, N] of REFERENCE_CASES) {
  Deno.test(`kmeans matches the f64 reference (d=${d}, n=${n}, N=${N})`, async () => {
    const gpu = await getGpu();
    assert.equal(usesTree(d, n), n === 1500, "the case list covers both pruning paths");
    const x = blobs(N, d, 37, d * 1000 + n);
    const iters = 6;
    const got = await kmeans(gpu, x, N, d, n, { iters, seed: 5 });
    const want = kmeansRef(x, N, d, n, iters, 5);
    assert.equal(got.iterations, want.iterations);
    let mismatches = 0;
    for (let i = 0; i < N; i++) {
      if (got.codes[i] === want.codes[i]) continue;
      const near = want.nearest[i], second = want.second[i];
      assert.ok(
        second - near <= 1e-6 * near,
        `point ${i}: code ${got.codes[i]} != ${want.codes[i]} (distances ${near}, ${second})`,
      );
      mismatches++;
    }
    assert.ok(mismatches <= 2, `${mismatches} near-tie mismatches`);
    assertClose(got.centroids, want.centroids, 1e-6, 1e-5, "centroids");
    assert.ok(Math.abs(got.objective - want.objective) <= 1e-6 * want.objective);
  });
}

for (const backend of ["gpu", "host"] as const) {
  Deno.test(`accelerated codes equal brute force and compute fewer distances (${backend})`, async () => {
    const gpu = await getGpu();
    const N = 20000, d = 4, n = 1000;
    const x = blobs(N, d, 50, 11);
    const fast = await kmeans(gpu, x, N, d, n, { iters: 10, seed: 2, backend });
    const slow = await kmeans(gpu, x, N, d, n, {
      iters: 10,
      seed: 2,
      accelerate: false,
      backend: "gpu",
    });
    assertSameRun(fast, slow, "accelerated vs brute force");
    assert.equal(slow.distanceEvals, slow.bruteForceEvals);
    assert.equal(fast.bruteForceEvals, slow.bruteForceEvals);
    assert.ok(
      fast.distanceEvals < 0.6 * slow.distanceEvals,
      `accelerated computed ${fast.distanceEvals} of ${slow.distanceEvals} distances`,
    );
    // The optional centroid-gap bound changes the work, never the result.
    const gap = await kmeans(gpu, x, N, d, n, { iters: 10, seed: 2, centroidGap: true, backend });
    assertSameRun(gap, slow, "with centroid gap");
  });
}

// The host backend computes the GPU's f32 distances bit for bit; with its bounds and without,
// it must give the GPU brute force's run exactly. Shapes: d from 1 to 16, n not a power of
// two, group counts that do not divide n, values on a coarse grid (exact ties, rounding-
// sensitive sums), and a planted far-away point (its own cluster after re-seeding).
for (
  const [d, n, N, grid] of [
    [1, 37, 3000, 0],
    [2, 777, 9000, 0],
    [3, 300, 5000, 8],
    [5, 129, 4000, 0],
    [7, 250, 3000, 4],
    [8, 336, 6144, 0],
    [11, 100, 2000, 0],
    [16, 65, 1500, 2],
  ]
) {
  Deno.test(`host and GPU accelerated runs equal GPU brute force (d=${d}, n=${n}, N=${N})`, async () => {
    const gpu = await getGpu();
    const rng = new Rng(d * 31 + n);
    const x = blobs(N, d, 23, d * 7 + n);
    if (grid > 0) { for (let i = 0; i < x.length; i++) x[i] = Math.round(x[i] * grid) / grid; }
    // A planted far-away point, at the end of the data.
    for (let k = 0; k < d; k++) x[(N - 1) * d + k] = 1e3 * (1 + rng.next());
    const iters = 8;
    const brute = await kmeans(gpu, x, N, d, n, {
      iters,
      seed: 3,
      accelerate: false,
      backend: "gpu",
    });
    for (
      const opts of [
        { backend: "host" as const },
        { backend: "host" as const, accelerate: false },
        { backend: "gpu" as const },
        { backend: "gpu" as const, maxGroups: 4, maxPointsPerDispatch: 777 },
      ]
    ) {
      const got = await kmeans(gpu, x, N, d, n, { iters, seed: 3, ...opts });
      assertSameRun(got, brute, JSON.stringify(opts));
    }
    // The far point sits alone on its centroid.
    const far = brute.codes[N - 1];
    assert.equal(brute.codes.filter((c) => c === far).length, 1);
  });
}

Deno.test("128 centroid groups that do not divide n give brute force's run", async () => {
  const gpu = await getGpu();
  const N = 12000, d = 4, n = 8200; // 128 groups of 64 or 65 centroids
  const x = blobs(N, d, 40, 20);
  const opts = { iters: 5, seed: 8, backend: "gpu" as const };
  let listed = 0;
  const fast = await kmeans(gpu, x, N, d, n, {
    ...opts,
    maxGroups: 128,
    onStats: (s) => listed = s[s.length - 1].listed,
  });
  const slow = await kmeans(gpu, x, N, d, n, { ...opts, accelerate: false });
  assertSameRun(fast, slow, "128 groups");
  assert.ok(fast.distanceEvals < slow.distanceEvals);
  assert.ok(listed > 0, "the last pass scanned some groups");
});

Deno.test("auto picks the host for small runs and keeps the GPU's results", async () => {
  const gpu = await getGpu();
  const N = 4096, d = 4, n = 16;
  const x = blobs(N, d, 10, 19);
  const live = gpu.bytesLive;
  gpu.bytesPeak = live;
  const auto = await kmeans(gpu, x, N, d, n, { iters: 5, backend: "auto" });
  assert.equal(gpu.bytesPeak, live, "no GPU memory for a small run");
  const onGpu = await kmeans(gpu, x, N, d, n, { iters: 5, backend: "gpu" });
  assertSameRun(auto, onGpu, "auto (host) vs gpu");
});

Deno.test("chunked points, short centroid ranges and any group count give the same run", async () => {
  const gpu = await getGpu();
  const N = 5000, d = 4, n = 300;
  const x = blobs(N, d, 20, 12);
  const base = await kmeans(gpu, x, N, d, n, { iters: 5, seed: 3, backend: "gpu" });
  const chunked = await kmeans(gpu, x, N, d, n, {
    backend: "gpu",
    iters: 5,
    seed: 3,
    maxPointsPerDispatch: 1111,
    maxCentroidsPerDispatch: 37,
  });
  assertSameRun(chunked, base, "chunked");
  const oneGroup = await kmeans(gpu, x, N, d, n, {
    iters: 5,
    seed: 3,
    maxGroups: 1,
    backend: "gpu",
  });
  assertSameRun(oneGroup, base, "one group");
  const brute = await kmeans(gpu, x, N, d, n, {
    backend: "gpu",
    iters: 5,
    seed: 3,
    accelerate: false,
    maxPointsPerDispatch: 999,
  });
  assertSameRun(brute, base, "chunked brute force");
});

Deno.test("kmeans assigns planted centroid at index n-1 (n = 70,000)", async () => {
  const gpu = await getGpu();
  const n = 70_000, d = 4, N = 300;
  const rng = new Rng(21);
  const x = Float32Array.from({ length: N * d }, () => rng.next());
  const c = Float32Array.from({ length: n * d }, () => 3 + rng.next());
  c.fill(0.5, (n - 1) * d);
  const want = new Uint32Array(N).fill(n - 1);
  // Default plan, and one group scanned in ranges of 60,000 centroids (near Mesa's loop cap).
  assert.deepEqual(await assignNearest(gpu, x, N, d, c, n), want);
  const long = await assignNearest(gpu, x, N, d, c, n, {
    maxGroups: 1,
    maxCentroidsPerDispatch: 60_000,
  });
  assert.deepEqual(long, want);
});

Deno.test("ties go to the lowest centroid index", async () => {
  const gpu = await getGpu();
  const d = 4, n = 200;
  const c = new Float32Array(n * d).fill(7);
  for (const j of [5, 77, 150, 199]) c.fill(1, j * d, (j + 1) * d); // equally near copies
  const x = new Float32Array(8 * d).fill(1);
  const codes = await assignNearest(gpu, x, 8, d, c, n, { maxCentroidsPerDispatch: 50 });
  assert.deepEqual(codes, new Uint32Array(8).fill(5));
});

Deno.test("objective equals the squared error of decodeT against the matrix", async () => {
  const gpu = await getGpu();
  for (const [out, inDim, d] of [[64, 48, 4], [30, 40, 4]]) {
    const w = blobs(out * inDim, 1, 9, out);
    const { x, N } = vectorize(w, out, inDim, d);
    const r = await kmeans(gpu, x, N, d, 64, { iters: 8, seed: 1 });
    const wT = decodeT(r.centroids, r.codes, inDim, out, d);
    let sse = 0;
    for (let i = 0; i < inDim; i++) {
      for (let o = 0; o < out; o++) sse += (wT[i * out + o] - w[o * inDim + i]) ** 2;
    }
    // Padded coordinates (zeros) count in the objective but are cut off by decoding.
    const cols = Math.ceil(out / d);
    let padErr = 0;
    for (let row = 0; row < inDim; row++) {
      const last = r.codes[row * cols + cols - 1] * d;
      for (let k = out - (cols - 1) * d; k < d; k++) padErr += r.centroids[last + k] ** 2;
    }
    assert.ok(
      Math.abs(r.objective - (sse + padErr)) <= 1e-9 * r.objective,
      `out=${out}: objective ${r.objective} vs ${sse} + ${padErr}`,
    );
    if (out % d === 0) assert.equal(padErr, 0);
  }
});

Deno.test("same inputs and seed give bit-identical runs; the seed matters", async () => {
  const gpu = await getGpu();
  const N = 8000, d = 6, n = 256;
  const x = blobs(N, d, 30, 13);
  const a = await kmeans(gpu, x, N, d, n, { iters: 6, seed: 9 });
  const b = await kmeans(gpu, x, N, d, n, { iters: 6, seed: 9 });
  assertSameRun(a, b, "repeat");
  const c = await kmeans(gpu, x, N, d, n, { iters: 6, seed: 10 });
  assert.ok(!sameBits(a.centroids, c.centroids));
});

Deno.test("empty clusters are re-seeded from the points of largest error", async () => {
  const gpu = await getGpu();
  // 20 distinct points, each repeated 10 times: many initial centroids coincide, so every
  // duplicate but the lowest-indexed one gets no points.
  const d = 4, n = 30, N = 200;
  const rng = new Rng(14);
  const distinct = Float32Array.from({ length: 20 * d }, () => rng.int(16));
  const x = new Float32Array(N * d);
  for (let i = 0; i < N; i++) x.set(distinct.subarray((i % 20) * d, (i % 20 + 1) * d), i * d);
  const iters = 10;
  const got = await kmeans(gpu, x, N, d, n, { iters, seed: 4 });
  const want = kmeansRef(x, N, d, n, iters, 4);
  assert.deepEqual(got.codes, want.codes);
  assert.ok(sameBits(got.centroids, want.centroids));
  assert.equal(got.iterations, want.iterations);
  assert.ok(got.iterations < iters, "a run of duplicates reaches a fixed point");
  // 20 distinct points, 30 centroids: every point ends on a centroid equal to it.
  assert.equal(got.objective, 0);
  const brute = await kmeans(gpu, x, N, d, n, { iters, seed: 4, accelerate: false });
  assertSameRun(got, brute, "accelerated vs brute force with duplicates");
  const onGpu = await kmeans(gpu, x, N, d, n, { iters, seed: 4, backend: "gpu" });
  assertSameRun(onGpu, brute, "GPU with duplicates");
});

Deno.test("re-seeded centroids (long jumps) keep accelerated equal to brute force", async () => {
  const gpu = await getGpu();
  // 400 distinct values among 6000 points and 600 centroids: empty clusters every iteration,
  // each re-seeded far from where it was, which the group bounds must survive.
  const d = 4, n = 600, N = 6000;
  const rng = new Rng(16);
  const distinct = blobs(400, d, 5, 17);
  const x = new Float32Array(N * d);
  for (let i = 0; i < N; i++) {
    const v = rng.int(400);
    x.set(distinct.subarray(v * d, v * d + d), i * d);
  }
  const fast = await kmeans(gpu, x, N, d, n, { iters: 8, seed: 6, backend: "gpu" });
  const slow = await kmeans(gpu, x, N, d, n, {
    iters: 8,
    seed: 6,
    accelerate: false,
    backend: "gpu",
  });
  assertSameRun(fast, slow, "with re-seeding");
  const host = await kmeans(gpu, x, N, d, n, { iters: 8, seed: 6, backend: "host" });
  assertSameRun(host, slow, "host with re-seeding");
});

Deno.test("update re-seeds empty clusters: largest error first, ties by lowest index", () => {
  // 1-D points; centroids 0 and 10 hold them all, centroids 2 and 3 are empty.
  const x = new Float32Array([0, 1, 4, 9, 10, 6, 4]);
  const prev = new Float32Array([0, 10, 100, 200]);
  const codes = new Uint32Array([0, 0, 0, 1, 1, 1, 0]);
  // errors against prev: 0, 1, 16, 1, 0, 16, 16 -> points 2 and 5 (ties by lowest index)
  const next = updateCentroids(x, 7, 1, 4, codes, prev);
  assert.deepEqual(Array.from(next), [9 / 4, 25 / 3, 4, 6].map(Math.fround));
});

Deno.test("initialisation: distinct seeded points; kmeans++ matches the reference", async () => {
  const N = 3000, d = 4, n = 200;
  const x = blobs(N, d, 12, 15);
  const c = initCentroids(x, N, d, n, 7);
  assert.ok(sameBits(c, initCentroids(x, N, d, n, 7)));
  const seen = new Set<string>();
  for (let j = 0; j < n; j++) seen.add(Array.from(c.subarray(j * d, j * d + d)).join(","));
  assert.equal(seen.size, n, "distinct points");
  const gpu = await getGpu();
  const got = await kmeans(gpu, x, N, d, n, { iters: 4, seed: 7, init: "kmeans++" });
  const want = kmeansRef(x, N, d, n, 4, 7, "kmeans++");
  let mismatches = 0;
  for (let i = 0; i < N; i++) if (got.codes[i] !== want.codes[i]) mismatches++;
  assert.ok(mismatches <= 2, `${mismatches} mismatches`);
  assertClose(got.centroids, want.centroids, 1e-6, 1e-5, "kmeans++ centroids");
});

Deno.test("kmeansGpuBytes predicts the GPU memory a run allocates", async () => {
  const gpu = await getGpu();
  const x = blobs(5000, 4, 10, 18);
  for (
    const opts of [{}, { accelerate: false }, { centroidGap: true, maxPointsPerDispatch: 999 }]
  ) {
    const live = gpu.bytesLive;
    gpu.bytesPeak = live;
    await kmeans(gpu, x, 5000, 4, 300, { iters: 1, backend: "gpu", ...opts });
    assert.equal(
      gpu.bytesPeak - live,
      kmeansGpuBytes(5000, 4, 300, gpu.limits.maxBinding, { iters: 1, ...opts }),
    );
    assert.equal(gpu.bytesLive, live, "every buffer released");
  }
});

Deno.test({
  name: "real weights: accelerated codes equal brute force (tinyllama q_proj, d=4, n=256)",
  ignore: !existsSync(`${TINYLLAMA}/model.safetensors`),
  fn: async () => {
    const gpu = await getGpu();
    const index = await SafetensorsIndex.open(TINYLLAMA);
    const name = "model.layers.0.self_attn.q_proj.weight";
    const [out, inDim] = index.info(name).shape;
    const w = await index.readF32(name);
    index.close();
    const d = 4, n = 256;
    const { x, N } = vectorize(w, out, inDim, d);
    const fast = await kmeans(gpu, x, N, d, n, { iters: 20, seed: 1, backend: "gpu" });
    const slow = await kmeans(gpu, x, N, d, n, {
      iters: 20,
      seed: 1,
      accelerate: false,
      backend: "gpu",
    });
    assertSameRun(fast, slow, "q_proj");
    assert.ok(fast.distanceEvals < slow.distanceEvals);
    const host = await kmeans(gpu, x, N, d, n, { iters: 20, seed: 1, backend: "host" });
    assertSameRun(host, slow, "q_proj on the host");
    assert.ok(host.distanceEvals < slow.distanceEvals);
  },
});
