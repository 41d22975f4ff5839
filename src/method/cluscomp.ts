// ClusComp: every linear of a block becomes codebooks and codes (k-means per matrix, src/cluster/),
// with (d, n) planned per matrix kind; codebooks can then be finetuned.
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { z } from "zod";
import { kmeans } from "../cluster/kmeans.ts";
import {
  formatPlan,
  matrixBits,
  type MatrixPlan,
  overallBits,
  planMatrices,
} from "../cluster/plan.ts";
import { clusterBlock, matrixSeed, storedCodebook } from "../cluster/stage.ts";
import { type BlockStats, inputOf, vectorWeights } from "../cluster/stats.ts";
import { UserError } from "../errors.ts";
import { vectorizeT } from "../cluster/vectorize.ts";
import {
  type ClusterModule,
  CODES_PACKING,
  packedCodesTensor,
  type QuantizationConfig,
} from "../format/compressed.ts";
import { getGpu } from "../gpu/device.ts";
import { writeFileAtomic } from "../io/atomic.ts";
import { LINEAR_KINDS, linearNames, type ModelConfig } from "../io/config.ts";
import { sha256 } from "../io/hash.ts";
import { codeBits } from "../io/pack.ts";
import type { WeightSource } from "../model/weights.ts";
import { Rng } from "../util/rng.ts";
import type { Method, MethodSettings } from "./method.ts";

export const cluscomp: Method = {
  name: "cluscomp",
  stage: "cluster",
  finetunable: true,
  async plan(cfg, src, s, inputs) {
    const weighted = s.cluster.weighting === "activations";
    if (weighted && !s.stats) {
      throw new UserError(
        "compress: --weighting activations needs calibration statistics (give --calib FILE)",
      );
    }
    const stats = weighted ? s.stats : undefined;
    const cached = await cachedPlan(
      s,
      inputs,
      () => planMatrices(cfg, s.cluster, sampleErrorFn(cfg, src, s.cluster.seed, stats)),
    );
    // Stored bits as this version writes them (packed codes), also for a plan cached by an
    // older version; the stage settings keep the cached plan so its work directory resumes.
    const plan = cached.map((p) => ({
      ...p,
      storedBits: matrixBits(p.out, p.in, p.d, p.n, p.splits).storedBits,
    }));
    const bits = overallBits(plan);
    const qc = quantConfig(cfg, s, plan, bits);
    return {
      bits,
      matrices: plan,
      settings: {
        plan: cached.map(({ reason: _, ...p }) => p),
        iters: s.cluster.iters,
        seed: s.cluster.seed,
        init: s.cluster.init,
        restarts: s.cluster.restarts,
        // Only when on: plain runs keep the settings (and work directories) they had.
        ...(weighted ? { weighting: "activations" } : {}),
      },
      note: `\n${formatPlan(plan)}\noverall ${bits.total.toFixed(4)} bits per weight`,
      quantizeBlock: async (gpu, layer, onMatrix) =>
        clusterBlock(gpu, cfg, src, layer, plan, s.cluster, onMatrix, await stats?.(layer)),
      // Codes leave the unit as U8 / U16 and are written packed at their bit width.
      blockTensors: (tensors) =>
        tensors.map((t) =>
          t.name.endsWith(".codes")
            ? packedCodesTensor(t, (qc.modules[t.name.slice(0, -6)] as ClusterModule).n)
            : storedCodebook(t, s.cluster.codebookDtype)
        ),
      quantConfig: () => qc,
    };
  },
};

function quantConfig(
  cfg: ModelConfig,
  s: MethodSettings,
  plan: MatrixPlan[],
  bits: { total: number; stored: number },
): QuantizationConfig {
  const modules: QuantizationConfig["modules"] = {};
  for (let l = 0; l < cfg.layers; l++) {
    for (const lin of linearNames(l, cfg)) {
      const p = plan.find((q) => q.kind === lin.kind)!;
      modules[lin.name.replace(/\.weight$/, "")] = {
        d: p.d,
        n: p.n,
        pad: p.pad,
        splits: p.splits,
        codebook_dtype: s.cluster.codebookDtype,
        codes_dtype: "packed",
        code_bits: codeBits(p.n),
      };
    }
  }
  return {
    quant_method: "cluscomp",
    bits_per_weight: bits.total,
    stored_bits_per_weight: bits.stored,
    codes_packing: CODES_PACKING,
    modules,
  };
}

/**
 * Quick k-means on a sample of one layer's matrix, for ranking (d, n) pairs; with `stats`, each
 * vector weighs its input feature's second moment and the error is the weighted mean.
 */
function sampleErrorFn(
  cfg: ModelConfig,
  src: WeightSource,
  seed: number,
  stats?: (layer: number) => Promise<BlockStats>,
) {
  const cache = new Map<string, Float32Array>();
  const layer = Math.floor(cfg.layers / 2);
  let layerStats: Promise<BlockStats> | undefined;
  return async (kind: MatrixPlan["kind"], d: number, n: number): Promise<number> => {
    const gpu = await getGpu();
    const lin = linearNames(layer, cfg).find((l) => l.kind === kind)!;
    let wT = cache.get(kind);
    if (!wT) {
      wT = await src.linearT(layer, kind);
      cache.set(kind, wT);
    }
    const { x, N } = vectorizeT(wT, lin.in, lin.out, d);
    const cols = Math.ceil(lin.out / d);
    let all: Float32Array | undefined;
    if (stats) {
      layerStats ??= stats(layer);
      all = vectorWeights((await layerStats).diag[inputOf(kind)], 0, lin.in, cols);
    }
    // A sample of up to 65,536 vectors, and n scaled down with it.
    const S = Math.min(N, 65536);
    let sample = x, weights = all;
    if (S < N) {
      const rng = new Rng(matrixSeed(seed, layer, kind) ^ d);
      sample = new Float32Array(S * d);
      if (all) weights = new Float32Array(S);
      for (let i = 0; i < S; i++) {
        const j = rng.int(N);
        sample.set(x.subarray(j * d, j * d + d), i * d);
        if (all) weights![i] = all[j];
      }
    }
    const nn = Math.max(2, Math.min(n, Math.floor(S * n / N), S));
    // Small samples run on the host ("auto"): a GPU pass costs a ~13 ms readback on llvmpipe.
    const r = await kmeans(gpu, sample, S, d, nn, {
      iters: 5,
      seed,
      backend: "auto",
      ...(weights ? { weights } : {}),
    });
    let total = S;
    if (weights) {
      total = 0;
      for (const w of weights) total += w;
    }
    return r.objective / (total * d);
  };
}

/** A cached plan as read back from disk (checked; a mismatch plans again). */
const PlanFile = z.array(
  z.object({
    kind: z.enum(LINEAR_KINDS as unknown as [string, ...string[]]),
    out: z.number().int().positive(),
    in: z.number().int().positive(),
    d: z.number().int().positive(),
    n: z.number().int().positive(),
    splits: z.number().int().positive(),
    pad: z.number().int().nonnegative(),
    vectors: z.number().int().positive(),
    codeBits: z.number(),
    codebookBits: z.number(),
    totalBits: z.number(),
    storedBits: z.number(),
    reason: z.string(),
  }),
).nonempty();

/**
 * The (d, n) plan, kept beside the work directory's units so a resumed run does not repeat the
 * sample k-means of a --bits search. Keyed by the cluster settings and the inputs; deterministic.
 */
async function cachedPlan(
  s: MethodSettings,
  inputs: string,
  make: () => Promise<MatrixPlan[]>,
): Promise<MatrixPlan[]> {
  // Weighted plans depend on the statistics too.
  const key = await sha256(
    JSON.stringify(
      s.cluster.weighting === "activations" ? [s.cluster, inputs, s.statsKey] : [s.cluster, inputs],
    ),
  );
  const path = join(s.work, "plans", `${key.slice(0, 32)}.json`);
  if (existsSync(path)) {
    try {
      const kept = PlanFile.safeParse(JSON.parse(await Deno.readTextFile(path)));
      if (kept.success) return kept.data as MatrixPlan[];
    } catch {
      // unreadable: plan again
    }
    // A plan file that is unreadable or not a plan (hand-edited, truncated): plan again.
  }
  const plan = await make();
  await Deno.mkdir(dirname(path), { recursive: true });
  await writeFileAtomic(path, new TextEncoder().encode(JSON.stringify(plan)));
  return plan;
}
