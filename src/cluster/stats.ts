// Calibration statistics of every linear's input: the full-precision block runs over the
// calibration windows (its inputs the full-precision outputs of the blocks before it, as the
// finetune stage's teacher sees them), and the GPU accumulates, per input, the second moment of
// each feature (the diagonal of X^T X) and optionally the whole Gram matrix X^T X. One work unit
// per block ("stats/block-NNN"): activation-aware clustering weighs W^T's rows by the diagonal;
// GPTQ takes the Gram matrix as its Hessian.
import { z } from "zod";
import type { Gpu } from "../gpu/device.ts";
import { Tensor } from "../gpu/tensor.ts";
import { type LinearKind, type ModelConfig, ropeInvFreq } from "../io/config.ts";
import { decodeSafetensors, encodeSafetensors } from "../io/safetensors.ts";
import {
  accumulateDiag,
  accumulateGram,
  accumulateGramTiled,
  gramRowsPerBuffer,
} from "../kernels/gram.ts";
import { ropeTables } from "../kernels/rope.ts";
import {
  BlockScratch,
  type BlockTap,
  forwardBlock,
  releaseBlock,
  uploadBlock,
} from "../model/block.ts";
import { embedWindow } from "../model/model.ts";
import type { WeightSource } from "../model/weights.ts";
import type { StageRunner, Unit } from "../runner/stage.ts";
import { hostMeter } from "../util/hostmeter.ts";

/** q,k,v <- attn (post input_layernorm); o_proj <- o (attention output); gate,up <- mlp (post
 * post_attention_layernorm); down_proj <- down (silu(gate) * up). */
export type InputName = "attn" | "o" | "mlp" | "down";
export const INPUT_NAMES: readonly InputName[] = ["attn", "o", "mlp", "down"];

export function inputOf(kind: LinearKind): InputName {
  switch (kind) {
    case "q":
    case "k":
    case "v":
      return "attn";
    case "o":
      return "o";
    case "gate":
    case "up":
      return "mlp";
    case "down":
      return "down";
  }
}

export interface BlockStats {
  /** Calibration tokens summed. */
  tokens: number;
  /** Mean over tokens of x_i^2, length in. */
  diag: Record<InputName, Float32Array>;
  /** Sum over tokens of x x^T, [in, in] row-major (when full statistics are asked for). */
  gram?: Record<InputName, Float32Array>;
}

/** What a run's statistics are computed from (the stats stage's settings in the manifest). */
export interface StatsSettings {
  /** SHA-256 of the calibration text. */
  text: string;
  samples: number;
  seqlen: number;
  holdout: number;
  seed: number;
}

/**
 * k-means weights of W^T's vectors from an input's diagonal: vector j of rows [r0, r0 + rows)
 * (cols vectors per row) weighs diag[r0 + floor(j / cols)], scaled to mean 1 over the matrix and
 * floored at 1e-6 (a feature never seen still counts a little, so no cluster weighs nothing).
 */
export function vectorWeights(
  diag: Float32Array,
  r0: number,
  rows: number,
  cols: number,
): Float32Array {
  let mean = 0;
  for (const v of diag) mean += v;
  mean /= diag.length;
  const w = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const v = mean > 0 ? Math.max(diag[r0 + r] / mean, 1e-6) : 1;
    w.fill(v, r * cols, (r + 1) * cols);
  }
  return w;
}

/** Features of each input. */
export function inputDims(cfg: ModelConfig): Record<InputName, number> {
  return {
    attn: cfg.hidden,
    o: cfg.heads * cfg.headDim,
    mlp: cfg.hidden,
    down: cfg.intermediate,
  };
}

/** GPU bytes of one block's accumulators (diag, and the Gram matrices when full). */
export function statsBytes(cfg: ModelConfig, full: boolean): number {
  let n = 0;
  for (const F of Object.values(inputDims(cfg))) n += F + (full ? F * F : 0);
  return 4 * n;
}

/** One block's accumulators on the GPU, fed by forwardBlock's tap. */
class Accumulator {
  readonly diag = {} as Record<InputName, Tensor>;
  /** Per input, Gram row blocks of at most one binding each. */
  readonly gram = {} as Record<InputName, { r0: number; rows: number; t: Tensor }[]>;
  tokens = 0;

  constructor(readonly gpu: Gpu, readonly dims: Record<InputName, number>, readonly full: boolean) {
    for (const name of INPUT_NAMES) {
      const F = dims[name];
      this.diag[name] = Tensor.empty(gpu, [F], `stats.diag.${name}`);
      if (full) {
        const per = gramRowsPerBuffer(F, gpu.limits.maxBinding);
        this.gram[name] = [];
        for (let r0 = 0; r0 < F; r0 += per) {
          const rows = Math.min(per, F - r0);
          this.gram[name].push({ r0, rows, t: Tensor.empty(gpu, [rows, F], `stats.gram.${name}`) });
        }
      }
    }
  }

  async zero(): Promise<void> {
    for (const name of INPUT_NAMES) {
      await this.gpu.write(this.diag[name].buffer, new Float32Array(this.dims[name]));
      for (const g of this.gram[name] ?? []) {
        await this.gpu.write(g.t.buffer, new Float32Array(g.rows * this.dims[name]));
      }
    }
  }

  /** Token-major scratch for the tiled Gram (grown to the largest tap). */
  private scratch: Tensor | null = null;

  readonly tap: BlockTap = (input, x, rows, ld, col0, cols) => {
    const a = { x: { buffer: x }, F: rows, T: cols, ld, col0 };
    accumulateDiag(this.gpu, a, this.diag[input].all);
    const parts = this.gram[input];
    if (!parts) return;
    if (rows * ld * 4 > this.gpu.limits.maxBinding) {
      // Past one binding the naive kernel, which reads x in place.
      for (const g of parts) accumulateGram(this.gpu, a, g.t.all, g.r0, g.rows);
      return;
    }
    if (!this.scratch || this.scratch.size < rows * ld) {
      this.scratch?.release();
      this.scratch = Tensor.empty(this.gpu, [rows * ld], "stats.scratch");
    }
    const acc = parts.map((g) => ({ acc: g.t.all, r0: g.r0, rows: g.rows }));
    accumulateGramTiled(this.gpu, a, this.scratch.all, acc);
  };

  async read(): Promise<BlockStats> {
    const diag = {} as Record<InputName, Float32Array>;
    const gram = {} as Record<InputName, Float32Array>;
    for (const name of INPUT_NAMES) {
      const d = await this.diag[name].toF32();
      for (let i = 0; i < d.length; i++) d[i] /= this.tokens;
      diag[name] = d;
      if (this.full) {
        const F = this.dims[name], g = new Float32Array(F * F);
        for (const part of this.gram[name]) g.set(await part.t.toF32(), part.r0 * F);
        gram[name] = g;
      }
    }
    return this.full ? { tokens: this.tokens, diag, gram } : { tokens: this.tokens, diag };
  }

  release(): void {
    this.scratch?.release();
    this.scratch = null;
    for (const name of INPUT_NAMES) {
      this.diag[name].release();
      for (const g of this.gram[name] ?? []) g.t.release();
    }
  }
}

/** Where a pass runs: the model, its calibration windows, and the rope tables for them. */
export interface StatsContext {
  gpu: Gpu;
  cfg: ModelConfig;
  src: WeightSource;
  /** Calibration windows of equal length (token ids). */
  windows: Int32Array[];
}

/**
 * Windows per forward pass: up to 16,384 tokens, and [features, tokens] of every activation
 * within one storage binding.
 */
export function statsBatch(
  cfg: ModelConfig,
  windows: number,
  T: number,
  maxBinding: number,
): number {
  const widest = Math.max(cfg.hidden, cfg.heads * cfg.headDim);
  const tokens = Math.min(16_384, Math.floor(maxBinding / (4 * widest)));
  return Math.max(1, Math.min(windows, Math.floor(tokens / T)));
}

/**
 * Runs full-precision block `layer` over every window, several windows per pass: its
 * statistics (when `stats`), and its outputs (the next block's inputs) in place of `xs`.
 */
async function blockPass(
  ctx: StatsContext,
  layer: number,
  xs: Float32Array[],
  stats: { full: boolean } | null,
): Promise<BlockStats | null> {
  const { gpu, cfg, src } = ctx;
  const H = cfg.hidden, T = ctx.windows[0].length;
  const B = statsBatch(cfg, xs.length, T, gpu.limits.maxBinding);
  const rope = ropeTables(ropeInvFreq(cfg), T);
  const block = await uploadBlock(gpu, cfg, src, layer);
  const x = Tensor.empty(gpu, [H, B * T], "stats.x");
  const acc = stats ? new Accumulator(gpu, inputDims(cfg), stats.full) : null;
  let scratch: BlockScratch | null = null;
  // A batch packed for the GPU and its outputs read back.
  const batchBytes = 2 * H * B * T * 4;
  hostMeter.hold(batchBytes);
  try {
    await acc?.zero();
    for (let w0 = 0; w0 < xs.length; w0 += B) {
      const b = Math.min(B, xs.length - w0), n = b * T;
      if (scratch?.windows !== b) {
        scratch?.release();
        scratch = null;
        scratch = await BlockScratch.create(gpu, cfg, b, T, rope);
      }
      // Feature-major [H, b * T]: window w's token t at column w * T + t.
      const packed = new Float32Array(H * n);
      for (let w = 0; w < b; w++) {
        for (let h = 0; h < H; h++) {
          packed.set(xs[w0 + w].subarray(h * T, h * T + T), h * n + w * T);
        }
      }
      await gpu.write(x.buffer, packed);
      forwardBlock(gpu, block, x, scratch, undefined, acc?.tap);
      if (acc) acc.tokens += n;
      const y = new Float32Array(await gpu.read(x.buffer, 0, H * n * 4));
      for (let w = 0; w < b; w++) {
        const out = new Float32Array(H * T);
        for (let h = 0; h < H; h++) out.set(y.subarray(h * n + w * T, h * n + w * T + T), h * T);
        xs[w0 + w] = out;
      }
    }
    return acc ? await acc.read() : null;
  } finally {
    hostMeter.drop(batchBytes);
    acc?.release();
    x.release();
    scratch?.release();
    releaseBlock(block);
  }
}

/** The inputs of block `layer`: the embeddings, through the full-precision blocks before it. */
async function inputsOf(ctx: StatsContext, layer: number): Promise<Float32Array[]> {
  const H = ctx.cfg.hidden;
  const table = await ctx.src.tensor("model.embed_tokens.weight");
  const xs = await hostMeter.during(
    table.byteLength,
    () => Promise.resolve(ctx.windows.map((w) => embedWindow(table, w, H))),
  );
  for (let l = 0; l < layer; l++) await blockPass(ctx, l, xs, null);
  return xs;
}

function actsBytes(ctx: StatsContext): number {
  return ctx.windows.length * ctx.windows[0].length * ctx.cfg.hidden * 4;
}

/** One block's statistics without a work unit (planning before the work directory is open). */
export async function layerStats(
  ctx: StatsContext,
  layer: number,
  full: boolean,
): Promise<BlockStats> {
  return await hostMeter.during(actsBytes(ctx), async () => {
    const xs = await inputsOf(ctx, layer);
    return (await blockPass(ctx, layer, xs, { full }))!;
  });
}

export const statsUnit = (l: number) => `stats/block-${String(l).padStart(3, "0")}`;

/** A stats unit's bytes: diag.NAME [F] and gram.NAME [F, F] as F32. */
export function encodeStats(s: BlockStats): Uint8Array {
  const bytes = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const tensors = [];
  for (const name of INPUT_NAMES) {
    const F = s.diag[name].length;
    tensors.push({
      name: `diag.${name}`,
      dtype: "F32" as const,
      shape: [F],
      data: bytes(s.diag[name]),
    });
    if (s.gram) {
      tensors.push({
        name: `gram.${name}`,
        dtype: "F32" as const,
        shape: [F, F],
        data: bytes(s.gram[name]),
      });
    }
  }
  return encodeSafetensors(tensors, { tokens: String(s.tokens) });
}

/** A stats unit read back (checked against the model's input sizes). */
export function decodeStats(
  bytes: Uint8Array,
  file: string,
  cfg: ModelConfig,
  tokens: number,
  full: boolean,
): BlockStats {
  const tensors = decodeSafetensors(bytes, file);
  const dims = inputDims(cfg);
  const get = (name: string, floats: number) => {
    const t = tensors.find((x) => x.name === name);
    if (!t || t.dtype !== "F32" || t.data.byteLength !== floats * 4) {
      throw new Error(`${file}: ${name} is missing or not F32 [${floats}]`);
    }
    const copy = new Uint8Array(t.data);
    return new Float32Array(copy.buffer);
  };
  const diag = {} as Record<InputName, Float32Array>;
  const gram = {} as Record<InputName, Float32Array>;
  for (const name of INPUT_NAMES) {
    diag[name] = get(`diag.${name}`, dims[name]);
    if (full) gram[name] = get(`gram.${name}`, dims[name] * dims[name]);
  }
  return full ? { tokens, diag, gram } : { tokens, diag };
}

/**
 * The stats stage: one unit per block, resumed when done (a unit with only the diagonal is
 * computed again when `full` is asked). Block inputs stay in host memory from one block to the
 * next; after resumed blocks they are rebuilt from the embeddings, forward only. Returns the
 * blocks' statistics, read from their units.
 */
export async function statsStage(
  runner: StageRunner,
  ctx: StatsContext,
  full: boolean,
): Promise<(layer: number) => Promise<BlockStats>> {
  const { cfg } = ctx;
  const Info = z.object({
    tokens: z.number().int().positive(),
    full: full ? z.literal(true) : z.boolean(),
  });
  // The inputs of block `next`, or null when they must be rebuilt.
  let held: { next: number; xs: Float32Array[] } | null = null;
  const bytes = actsBytes(ctx);
  const drop = () => {
    if (held) hostMeter.drop(bytes);
    held = null;
  };
  try {
    const units: Unit<z.infer<typeof Info>>[] = Array.from({ length: cfg.layers }, (_, l) => ({
      name: statsUnit(l),
      file: `${statsUnit(l)}.safetensors`,
      info: Info,
      fields: { block: l },
      resumed: drop,
      run: async () => {
        if (!held || held.next !== l) {
          drop();
          hostMeter.hold(bytes);
          held = { next: l, xs: await inputsOf(ctx, l) };
        }
        const s = (await blockPass(ctx, l, held.xs, { full }))!;
        held.next = l + 1;
        return { data: encodeStats(s), info: { tokens: s.tokens, full } };
      },
    }));
    await runner.stage("stats", units);
  } finally {
    drop();
  }
  return async (l: number) => {
    const unit = statsUnit(l);
    const r = await runner.done(unit, Info);
    if (!r) throw new Error(`stats: ${unit} is not done`);
    return decodeStats(
      await runner.read(unit),
      runner.work.path(`${unit}.safetensors`),
      cfg,
      r.info.tokens,
      full,
    );
  };
}
