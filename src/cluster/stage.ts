// The cluster stage for one block: every linear becomes codebooks (f32 while working) and codes,
// or RTN parts for the baseline. Returns the unit's tensors and per-matrix facts.
import type { Gpu } from "../gpu/device.ts";
import { type LinearKind, linearNames, type ModelConfig } from "../io/config.ts";
import { f32ToBf16Bytes, f32ToF16Bytes } from "../io/safetensors.ts";
import type { TensorBytes } from "../format/compressed.ts";
import type { WeightSource } from "../model/weights.ts";
import { HOST_MAX_WORK, kmeans, kmeansGpuBytes } from "./kmeans.ts";
import type { ClusterSettings, MatrixPlan } from "./plan.ts";
import { rtnQuantize, rtnTensors } from "./rtn.ts";
import { type BlockStats, inputOf, vectorWeights } from "./stats.ts";
import { vectorizeT } from "./vectorize.ts";

export interface MatrixFacts {
  kind: LinearKind;
  /**
   * The k-means objective: sum of squared errors of decode(encode(W)) vs W, each vector's error
   * times its weight under --weighting activations.
   */
  objective: number;
  /** objective / weights. */
  mse: number;
  distanceEvals: number;
  bruteForceEvals: number;
  seconds: number;
}

/** A seed for one matrix that does not depend on the order matrices are processed in. */
export function matrixSeed(seed: number, layer: number, kind: LinearKind): number {
  let h = (seed ^ 0x811c9dc5) >>> 0;
  for (const c of `${layer}:${kind}`) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0;
  return h;
}

/**
 * GPU bytes under which a block's matrices cluster at once. Each k-means pass waits ~13 ms on its
 * readback on llvmpipe; several runs in flight overlap those waits (tinyllama-6.8m at d 8, n 1024:
 * 23-25 s -> 14-16 s, the same bytes: every run is independent and seeded by its matrix).
 */
export const CONCURRENT_GPU_BYTES = 256 * 2 ** 20;

/** Whether a block's matrices cluster at once: all assigned on the GPU, together in the cap. */
export function concurrentMatrices(
  plans: Pick<MatrixPlan, "vectors" | "d" | "n">[],
  maxBinding: number,
): boolean {
  let sum = 0;
  for (const p of plans) {
    if (p.vectors * p.n * p.d <= HOST_MAX_WORK) return false;
    sum += kmeansGpuBytes(p.vectors, p.d, p.n, maxBinding);
  }
  return sum <= CONCURRENT_GPU_BYTES;
}

export async function clusterBlock(
  gpu: Gpu,
  cfg: ModelConfig,
  src: WeightSource,
  layer: number,
  plans: MatrixPlan[],
  s: ClusterSettings,
  onMatrix?: (kind: LinearKind, iter: number, objective: number) => void,
  stats?: BlockStats,
): Promise<{ tensors: TensorBytes[]; facts: MatrixFacts[] }> {
  const tensors: TensorBytes[] = [];
  const facts: MatrixFacts[] = [];
  if (s.weighting === "activations" && !stats) {
    throw new Error(`cluster: block ${layer} has no statistics for --weighting activations`);
  }
  const one = async (lin: ReturnType<typeof linearNames>[number]) => {
    const tensors: TensorBytes[] = [];
    const p = plans.find((q) => q.kind === lin.kind)!;
    const start = performance.now();
    const wT = await src.linearT(layer, lin.kind);
    // W^T [in, out] is row-major; vectorize wants W [out, in]: cut W^T rows directly.
    const { x, N } = vectorizeT(wT, lin.in, lin.out, p.d);
    const rowsPer = lin.in / p.splits;
    const cols = Math.ceil(lin.out / p.d);
    const perSplit = rowsPer * cols;
    const centroids = new Float32Array(p.splits * p.n * p.d);
    const codes = p.n <= 256 ? new Uint8Array(N) : new Uint16Array(N);
    let objective = 0, evals = 0, brute = 0;
    for (let sp = 0; sp < p.splits; sp++) {
      const part = x.subarray(sp * perSplit * p.d, (sp + 1) * perSplit * p.d);
      const weights = s.weighting === "activations"
        ? vectorWeights(stats!.diag[inputOf(lin.kind)], sp * rowsPer, rowsPer, cols)
        : undefined;
      let r: Awaited<ReturnType<typeof kmeans>> | null = null;
      for (let k = 0; k < s.restarts; k++) {
        const run = await kmeans(gpu, part, perSplit, p.d, p.n, {
          iters: s.iters,
          seed: matrixSeed(s.seed + 7919 * k, layer, lin.kind) + sp,
          init: s.init,
          // Small matrices assign on the host: a GPU readback per pass costs more than the work.
          backend: "auto",
          onIter: (i, obj) => onMatrix?.(lin.kind, i, obj),
          ...(weights ? { weights } : {}),
        });
        evals += run.distanceEvals;
        brute += run.bruteForceEvals;
        if (!r || run.objective < r.objective) r = run;
      }
      centroids.set(r!.centroids, sp * p.n * p.d);
      codes.set(r!.codes, sp * perSplit);
      objective += r!.objective;
    }
    const name = lin.name.replace(/\.weight$/, "");
    tensors.push({
      name: `${name}.codebook`,
      dtype: "F32",
      shape: p.splits === 1 ? [p.n, p.d] : [p.splits, p.n, p.d],
      data: new Uint8Array(centroids.buffer),
    });
    tensors.push({
      name: `${name}.codes`,
      dtype: p.n <= 256 ? "U8" : "U16",
      shape: [lin.in, cols],
      data: new Uint8Array(codes.buffer, codes.byteOffset, codes.byteLength),
    });
    const fact: MatrixFacts = {
      kind: lin.kind,
      objective,
      mse: objective / (lin.in * lin.out),
      distanceEvals: evals,
      bruteForceEvals: brute,
      seconds: (performance.now() - start) / 1000,
    };
    return { tensors, fact };
  };
  const lins = linearNames(layer, cfg);
  let done: Awaited<ReturnType<typeof one>>[] = [];
  if (concurrentMatrices(plans, gpu.limits.maxBinding)) done = await Promise.all(lins.map(one));
  else for (const lin of lins) done.push(await one(lin));
  for (const d of done) {
    tensors.push(...d.tensors);
    facts.push(d.fact);
  }
  return { tensors, facts };
}

/** RTN parts for one block. */
export async function rtnBlock(
  cfg: ModelConfig,
  src: WeightSource,
  layer: number,
  bits: number,
  group: number,
): Promise<{ tensors: TensorBytes[]; facts: MatrixFacts[] }> {
  const tensors: TensorBytes[] = [];
  const facts: MatrixFacts[] = [];
  for (const lin of linearNames(layer, cfg)) {
    const start = performance.now();
    const wT = await src.linearT(layer, lin.kind);
    const w = new Float32Array(lin.out * lin.in);
    for (let i = 0; i < lin.in; i++) {
      for (let o = 0; o < lin.out; o++) w[o * lin.in + i] = wT[i * lin.out + o];
    }
    const r = rtnQuantize(w, lin.out, lin.in, bits, group);
    const groups = Math.ceil(lin.in / group);
    let objective = 0;
    for (let o = 0; o < lin.out; o++) {
      for (let i = 0; i < lin.in; i++) {
        const g = o * groups + Math.floor(i / group);
        const v = (r.q[o * lin.in + i] - r.zeros[g]) * r.scales[g];
        objective += (v - w[o * lin.in + i]) ** 2;
      }
    }
    const name = lin.name.replace(/\.weight$/, "");
    tensors.push(...rtnTensors(name, r, lin.out, lin.in, group));
    facts.push({
      kind: lin.kind,
      objective,
      mse: objective / (lin.in * lin.out),
      distanceEvals: 0,
      bruteForceEvals: 0,
      seconds: (performance.now() - start) / 1000,
    });
  }
  return { tensors, facts };
}

/** Converts a unit's f32 codebooks to the stored dtype for export. */
export function storedCodebook(t: TensorBytes, dtype: "f16" | "bf16"): TensorBytes {
  if (!t.name.endsWith(".codebook") || t.dtype !== "F32") return t;
  const f = new Float32Array(
    t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.byteLength),
  );
  return dtype === "f16"
    ? { ...t, dtype: "F16", data: f32ToF16Bytes(f) }
    : { ...t, dtype: "BF16", data: f32ToBf16Bytes(f) };
}
