// The cluster stage's block: matrices clustered at once (small, all on the GPU) give exactly the
// codebooks and codes of one k-means run per matrix, one after another.
import assert from "node:assert/strict";
import { clusterBlock, concurrentMatrices, matrixSeed } from "../../src/cluster/stage.ts";
import { kmeans } from "../../src/cluster/kmeans.ts";
import { planMatrices } from "../../src/cluster/plan.ts";
import { vectorizeT } from "../../src/cluster/vectorize.ts";
import { openModel } from "../../src/format/open.ts";
import { getGpu } from "../../src/gpu/device.ts";
import { linearNames } from "../../src/io/config.ts";
import { HAS_SHARED, TINYLLAMA } from "../shared.ts";
import { clusterSettings } from "../settings.ts";

/** Equal bytes, or a failure naming the first differing byte (no multi-megabyte diff). */
function sameBytes(got: Uint8Array, want: Uint8Array, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  const i = got.findIndex((v, k) => v !== want[k]);
  assert.equal(i, -1, `${what}: byte ${i} is ${got[i]}, want ${want[i]}`);
}

Deno.test({
  name: "tinyllama block 0 at d 8, n 1024: the matrices at once equal one run each",
  ignore: !HAS_SHARED,
  fn: async () => {
    const gpu = await getGpu();
    const m = await openModel(TINYLLAMA);
    try {
      const s = clusterSettings({ d: 8, n: 1024, iters: 4 });
      const plans = await planMatrices(m.cfg, s);
      assert.ok(concurrentMatrices(plans, gpu.limits.maxBinding), "this case must run at once");
      const block = await clusterBlock(gpu, m.cfg, m.source, 0, plans, s);
      for (const lin of linearNames(0, m.cfg)) {
        const p = plans.find((q) => q.kind === lin.kind)!;
        const { x, N } = vectorizeT(await m.source.linearT(0, lin.kind), lin.in, lin.out, p.d);
        const r = await kmeans(gpu, x, N, p.d, p.n, {
          iters: s.iters,
          seed: matrixSeed(s.seed, 0, lin.kind),
          init: s.init,
          backend: "auto",
        });
        const name = lin.name.replace(/\.weight$/, "");
        const cb = block.tensors.find((t) => t.name === `${name}.codebook`)!;
        const codes = block.tensors.find((t) => t.name === `${name}.codes`)!;
        sameBytes(cb.data, new Uint8Array(r.centroids.buffer), `${name}.codebook`);
        sameBytes(codes.data, new Uint8Array(Uint16Array.from(r.codes).buffer), `${name}.codes`);
      }
    } finally {
      m.index.close();
    }
  },
});

Deno.test("small GPU-assigned matrices run at once; host-assigned or large ones do not", () => {
  const M = 128 * 2 ** 20;
  assert.equal(concurrentMatrices([{ vectors: 24576, d: 8, n: 1024 }], M), true);
  // N * n * d <= 2^22: assigned on the host, where running at once gains nothing.
  assert.equal(concurrentMatrices([{ vectors: 512, d: 4, n: 16 }], M), false);
  // Llama-2-7B's MLP at d 8, n 65536: far past the cap.
  assert.equal(concurrentMatrices([{ vectors: 4096 * 1376, d: 8, n: 65536 }], M), false);
});
