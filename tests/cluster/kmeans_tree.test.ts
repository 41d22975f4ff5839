// The k-d tree assignment (pruning "tree"): codes and centroids equal GPU brute force's bit for
// bit, on awkward shapes, ties, re-seeding, chunks, candidate batches, weights and a list as
// long as the loop cap allows; its work and memory are what it reports.
import assert from "node:assert/strict";
import {
  assignNearest,
  kmeans,
  kmeansGpuBytes,
  type KmeansOptions,
  usesTree,
} from "../../src/cluster/kmeans.ts";
import { kdGroups, TreeAssigner } from "../../src/cluster/kmeans_tree.ts";
import { getGpu } from "../../src/gpu/device.ts";
import { Rng } from "../../src/util/rng.ts";
import { assertSameRun, blobs, firstDiff } from "./kmeans_data.ts";

// Shapes: d 1 to 8, n not a power of two, N not a multiple of the tile, values on a coarse grid
// (exact ties between centroids), a planted far point (its own cluster after re-seeding).
for (
  const [d, n, N, grid] of [
    [1, 1500, 20000, 0],
    [2, 1100, 9001, 4],
    [3, 1300, 12000, 0],
    [4, 2000, 30000, 0],
    [4, 1024, 10000, 2],
    [6, 1200, 8000, 0],
    [8, 1030, 7000, 3],
    [3, 5, 7, 0],
    [2, 40, 130, 1],
  ]
) {
  Deno.test(`tree codes equal GPU brute force (d=${d}, n=${n}, N=${N}, grid=${grid})`, async () => {
    const gpu = await getGpu();
    const rng = new Rng(d * 17 + n);
    const x = blobs(N, d, 40, d * 5 + n);
    if (grid > 0) { for (let i = 0; i < x.length; i++) x[i] = Math.round(x[i] * grid) / grid; }
    for (let k = 0; k < d; k++) x[(N - 1) * d + k] = 1e3 * (1 + rng.next());
    const base: KmeansOptions = { iters: 6, seed: 2, backend: "gpu" };
    const brute = await kmeans(gpu, x, N, d, n, { ...base, accelerate: false });
    const stats: number[] = [];
    const tree = await kmeans(gpu, x, N, d, n, {
      ...base,
      pruning: "tree",
      onStats: (s) => stats.push(...s.map((p) => p.evals)),
    });
    assertSameRun(tree, brute, "tree");
    assert.equal(stats.length, tree.iterations + 1);
    assert.equal(stats.reduce((a, b) => a + b, 0), tree.distanceEvals);
    assert.equal(tree.bruteForceEvals, brute.bruteForceEvals);
    if (d <= 4 && N >= 5000) {
      assert.ok(
        tree.distanceEvals < 0.6 * brute.distanceEvals,
        `tree computed ${tree.distanceEvals} of ${brute.distanceEvals} distances`,
      );
    }
    // Chunks of points (several buffers, codes gathered back) give the same run.
    const chunked = await kmeans(gpu, x, N, d, n, {
      ...base,
      pruning: "tree",
      maxPointsPerDispatch: 1000,
    });
    assertSameRun(chunked, brute, "tree, chunked");
  });
}

Deno.test("tree with re-seeded empty clusters and weights equals brute force", async () => {
  const gpu = await getGpu();
  // 1,500 distinct values among 12,000 points, 1,200 centroids: empty clusters every pass.
  const d = 4, n = 1200, N = 12000;
  const rng = new Rng(71);
  const distinct = blobs(1500, d, 6, 72);
  const x = new Float32Array(N * d);
  for (let i = 0; i < N; i++) {
    const v = rng.int(1500);
    x.set(distinct.subarray(v * d, v * d + d), i * d);
  }
  const weights = Float32Array.from({ length: N }, (_, i) => i % 4 === 0 ? 0 : 1 + rng.next());
  for (const w of [undefined, weights]) {
    const opts: KmeansOptions = { iters: 8, seed: 5, backend: "gpu", weights: w };
    const brute = await kmeans(gpu, x, N, d, n, { ...opts, accelerate: false });
    const tree = await kmeans(gpu, x, N, d, n, { ...opts, pruning: "tree" });
    assertSameRun(tree, brute, w ? "weighted" : "unweighted");
  }
});

Deno.test("tree: ties go to the lowest index; candidate batches; moved centroids", async () => {
  const gpu = await getGpu();
  const d = 4, n = 3000, N = 5000;
  const rng = new Rng(81);
  // Integer points and centroids: many exact ties, among duplicated centroids too.
  const x = Float32Array.from({ length: N * d }, () => rng.int(6));
  const c = Float32Array.from({ length: n * d }, () => rng.int(6));
  for (let j = 0; j < 300; j++) c.copyWithin((n - 1 - j) * d, j * d, j * d + d);
  const moved = c.map((v, i) => i % 7 === 0 ? v + 0.5 : v);
  const want0 = await assignNearest(gpu, x, N, d, c, n);
  const want1 = await assignNearest(gpu, x, N, d, moved, n);
  // A small candidate buffer: many dispatch batches per pass.
  for (const cap of [undefined, 5000]) {
    const a = new TreeAssigner(gpu, N, d, n, Infinity, cap);
    try {
      await a.upload(x);
      const got0 = await a.assign(c, null);
      assert.deepEqual(got0, want0, `first pass, cap ${cap}: ${firstDiff(got0, want0)}`);
      const got1 = await a.assign(moved, c);
      assert.deepEqual(got1, want1, `second pass, cap ${cap}: ${firstDiff(got1, want1)}`);
      if (cap) assert.ok(a.stats[0].listed > 2 * cap, `${a.stats[0].listed} listed: one batch`);
    } finally {
      a.release();
    }
  }
});

Deno.test("tree: a list of 100,000 centroids, the nearest last (Mesa's loop cap)", async () => {
  const gpu = await getGpu();
  // Every centroid within the filter's margin of every point: each tile lists all n. The
  // nearest has the largest first coordinate, so the tree puts it in the last leaf: it is the
  // last candidate of every list, at trip 50,000 (100,000 without the kernel's two per trip).
  const d = 4, n = 100_000, N = 300;
  const x = new Float32Array(N * d);
  for (let i = 0; i < N; i++) x[i * d] = 2;
  const c = new Float32Array(n * d);
  for (let j = 0; j < n; j++) c[j * d] = 1;
  c[(n - 1) * d] = 1 + 2 ** -23;
  const a = new TreeAssigner(gpu, N, d, n, Infinity);
  try {
    await a.upload(x);
    const got = await a.assign(c, null);
    assert.deepEqual(got, new Uint32Array(N).fill(n - 1));
    assert.ok(a.stats[0].listed >= 3 * n, `listed ${a.stats[0].listed}`);
  } finally {
    a.release();
  }
});

Deno.test("kdGroups: every point once, groups within one of N / parts, units", () => {
  const N = 10007, d = 3;
  const x = blobs(N, d, 9, 91);
  for (const parts of [1, 7, 64, 157]) {
    const { ids, start } = kdGroups(x, N, d, parts);
    assert.deepEqual(Array.from(ids).sort((a, b) => a - b), Array.from({ length: N }, (_, i) => i));
    for (let g = 0; g < parts; g++) {
      const size = start[g + 1] - start[g];
      assert.ok(Math.abs(size - N / parts) < 1, `group ${g} holds ${size}`);
    }
  }
  // In units of 8 (tiles of 8 cells of at most 16 points, as the tree path cuts them): every
  // cell within one of N / parts, so at most 16.
  const parts = 8 * Math.ceil(N / 128);
  const { ids, start } = kdGroups(x, N, d, parts, 8);
  assert.deepEqual(Array.from(ids).sort((a, b) => a - b), Array.from({ length: N }, (_, i) => i));
  for (let g = 0; g < parts; g++) {
    const size = start[g + 1] - start[g];
    assert.ok(size <= 16 && Math.abs(size - N / parts) < 1, `cell ${g} holds ${size}`);
  }
  assert.throws(() => kdGroups(x, N, d, 12, 8), /units of 8/);
});

Deno.test("tree: auto picks it for d <= 4 and n >= 1024; memory as predicted", async () => {
  assert.equal(usesTree(4, 1024), true);
  assert.equal(usesTree(4, 1023), false);
  assert.equal(usesTree(5, 4096), false);
  assert.equal(usesTree(8, 4096, { pruning: "tree" }), true);
  assert.equal(usesTree(4, 4096, { accelerate: false }), false);
  assert.throws(() => usesTree(9, 4096, { pruning: "tree" }), /d <= 8/);
  const gpu = await getGpu();
  const x = blobs(6000, 4, 10, 92);
  for (const opts of [{}, { maxPointsPerDispatch: 999 }]) {
    const live = gpu.bytesLive;
    gpu.bytesPeak = live;
    await kmeans(gpu, x, 6000, 4, 1500, { iters: 2, backend: "gpu", ...opts });
    assert.equal(
      gpu.bytesPeak - live,
      kmeansGpuBytes(6000, 4, 1500, gpu.limits.maxBinding, { iters: 2, ...opts }),
    );
    assert.equal(gpu.bytesLive, live, "every buffer released");
  }
});
