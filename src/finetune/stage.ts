// The finetune stage: ClusComp's block-wise reconstruction. For block i the teacher is the
// full-precision block on the full-precision input; the student is the clustered block on the
// output of the already-finetuned blocks 0..i-1. Only codebooks train (AdamW on the MSE between
// the two outputs, `batch` windows per step as one dispatch sequence: the step's gradient is the
// mean over its windows); the best epoch on held-out windows is kept.
import type { Gpu } from "../gpu/device.ts";
import { Tensor } from "../gpu/tensor.ts";
import { LINEAR_KINDS, type LinearKind, type ModelConfig, ropeInvFreq } from "../io/config.ts";
import { decodeSafetensors, encodeSafetensors } from "../io/safetensors.ts";
import { mseGrad } from "../kernels/mse.ts";
import { ropeTables } from "../kernels/rope.ts";
import { BlockScratch, forwardBlock, releaseBlock, uploadBlock } from "../model/block.ts";
import { embedWindow } from "../model/model.ts";
import type { WeightSource } from "../model/weights.ts";
import type { TensorBytes } from "../format/compressed.ts";
import type { StageRunner, Unit } from "../runner/stage.ts";
import { hostMeter } from "../util/hostmeter.ts";
import { Rng } from "../util/rng.ts";
import { z } from "zod";
import { type AdamWSettings, type CodebookData, StudentBlock } from "./student.ts";
import { type Acts, DiskActs, MemActs, removeScratch } from "./stream.ts";

export interface FinetuneSettings {
  epochs: number;
  lr: number;
  weightDecay: number;
  /** Epochs without held-out improvement before stopping. */
  patience: number;
  /** Add the paper's extra term: MSE against the full-precision block on the student's input. */
  extraTerm: boolean;
  seed: number;
  /**
   * Host-memory cap in bytes for the activation streams. When the student and teacher streams
   * (2 x windows x hidden x seqlen f32) exceed it, they live as one file per window in a scratch
   * folder of the work directory (deleted as each block finishes) instead of in host memory, and
   * no activations unit is kept (a resume replays the finished blocks). Results are byte-identical.
   */
  hostBudget?: number;
  /**
   * Windows per step (default 1), run side by side as one sequence of dispatches; the loss is the
   * mean over the step's windows. At most the number of training windows; an epoch's last step
   * is filled up from the start of the epoch's order. 1 gives the same bytes as before batching.
   */
  batch?: number;
}

/** The CLI's default windows per finetuning step (see README, "Block finetuning batch"). */
export const DEFAULT_FINETUNE_BATCH = 1;

/**
 * Windows per step for `asked`: at most the training windows, and what keeps the MLP's
 * [intermediate, B * T] activations in one binding (at least 1).
 */
export function stepWindows(
  cfg: ModelConfig,
  T: number,
  asked: number,
  trainWindows: number,
  maxBinding: number,
): number {
  const fit = Math.floor(maxBinding / 4 / (cfg.intermediate * T));
  return Math.max(1, Math.min(asked, trainWindows, fit));
}

export interface BlockReport {
  layer: number;
  /** Held-out MSE of the clustered block before training, and per epoch. */
  initialMse: number;
  epochMse: number[];
  trainLoss: number[];
  bestEpoch: number;
  bestMse: number;
  steps: number;
  tokens: number;
  seconds: number;
}

const f32 = (t: TensorBytes) =>
  new Float32Array(t.data.buffer, t.data.byteOffset, t.data.byteLength / 4);

/** A new, empty activation stream (in memory, or a scratch folder under a host-memory cap). */
type MakeActs = () => Promise<Acts>;

/** Runs a full-precision block over windows (teacher), returning outputs per window. */
async function teacherPass(
  gpu: Gpu,
  cfg: ModelConfig,
  src: WeightSource,
  layer: number,
  inputs: Acts,
  T: number,
  rope: { cos: Float32Array; sin: Float32Array },
  make: MakeActs,
): Promise<Acts> {
  const block = await uploadBlock(gpu, cfg, src, layer);
  const scratch = await BlockScratch.create(gpu, cfg, 1, T, rope);
  const x = Tensor.empty(gpu, [cfg.hidden, T], "teacher.x");
  const out = await make();
  try {
    for (let i = 0; i < inputs.length; i++) {
      await gpu.write(x.buffer, await inputs.get(i));
      forwardBlock(gpu, block, x, scratch);
      await out.put(i, await x.toF32());
    }
  } finally {
    x.release();
    scratch.release();
    releaseBlock(block);
  }
  return out;
}

export interface FinetuneInput {
  gpu: Gpu;
  cfg: ModelConfig;
  src: WeightSource;
  /** Units, resume, checkpoints (signals, time budget) and progress. */
  runner: StageRunner;
  /** The cluster stage's unit for a block: f32 codebooks and codes. */
  clusterUnit: (layer: number) => Promise<TensorBytes[]>;
  /** Per-kind (n, d, splits). */
  shapes: Record<LinearKind, { n: number; d: number; splits: number }>;
  train: Int32Array[];
  heldOut: Int32Array[];
  settings: FinetuneSettings;
}

/** A finished block's unit facts (checked when read back). */
const BlockInfo = z.object({
  report: z.object({
    layer: z.number().int(),
    initialMse: z.number(),
    epochMse: z.array(z.number()),
    trainLoss: z.array(z.number()),
    bestEpoch: z.number().int(),
    bestMse: z.number(),
    steps: z.number().int(),
    tokens: z.number().int(),
    seconds: z.number(),
  }) satisfies z.ZodType<BlockReport>,
});
type BlockInfo = z.infer<typeof BlockInfo>;

export const finetuneUnit = (l: number) => `finetune/block-${String(l).padStart(3, "0")}`;
/** The student and teacher outputs of block l over all windows: the next block's inputs. */
export const activationsUnit = (l: number) => `${finetuneUnit(l)}/acts`;
/** Block l's latest epoch checkpoint (codebooks, AdamW state, best codebooks). */
export const epochUnit = (l: number) => `${finetuneUnit(l)}/epoch`;

/**
 * Drops what no resume needs any more: the activations of every block but `keep` (none when
 * null) and the epoch checkpoints of blocks 0..`done` (finished blocks). Idempotent, so a run
 * killed before it pruned prunes at the next hand-over.
 */
async function prune(runner: StageRunner, keep: number | null, done: number): Promise<void> {
  await runner.prune((u) => {
    const m = /^finetune\/block-(\d+)\/(acts|epoch)$/.exec(u);
    if (!m) return false;
    const l = Number(m[1]);
    return m[2] === "acts" ? l !== keep : l <= done;
  });
}

/**
 * Finetunes every block in order, resuming from the work directory. Returns per-block reports.
 * A finished block keeps only its codebooks and report; its outputs (the next block's inputs)
 * stay until the next block is finished, and its epoch checkpoint is dropped when it finishes,
 * so the work directory holds at most two blocks' activations (one between hand-overs).
 */
export async function finetune(inp: FinetuneInput): Promise<BlockReport[]> {
  const { cfg, runner } = inp;
  const H = cfg.hidden, T = inp.train[0].length;
  const windows = [...inp.train, ...inp.heldOut];
  const rope = ropeTables(ropeInvFreq(cfg), T);
  // Under a host-memory cap the two streams go through files, one per window.
  const cap = inp.settings.hostBudget;
  const streamBytes = 2 * windows.length * H * T * 4;
  const streamed = cap !== undefined && streamBytes > cap;
  const scratchDir = runner.work.path("finetune/streams");
  let serial = 0;
  const make: MakeActs = async () =>
    streamed
      ? await DiskActs.create(`${scratchDir}/${serial++}`, windows.length)
      : new MemActs(windows.length);
  const asked = inp.settings.batch ?? 1;
  const B = stepWindows(cfg, T, asked, inp.train.length, inp.gpu.limits.maxBinding);
  if (B < asked) {
    runner.progress.note(
      "finetune",
      `${B} windows per step instead of ${asked}: ${
        B === inp.train.length ? "the training windows" : "one binding's activations"
      }`,
    );
  }
  const ctx: BlockContext = { inp, T, B, rope, make, nTrain: inp.train.length };
  await removeScratch(scratchDir);
  if (streamed) {
    runner.progress.note(
      "finetune",
      `activations streamed through ${scratchDir}: ${
        (streamBytes / 2 ** 20).toFixed(1)
      } MiB of student and teacher streams over the host cap of ${(cap / 2 ** 20).toFixed(1)} MiB`,
    );
  }
  // The student and teacher inputs of the next block to run; null when they must be rebuilt
  // (at the start, and after resumed blocks).
  let acts: Streams | null = null;
  try {
    const units: Unit<BlockInfo>[] = Array.from({ length: cfg.layers }, (_, l) => ({
      name: finetuneUnit(l),
      file: `${finetuneUnit(l)}.safetensors`,
      info: BlockInfo,
      fields: { block: l },
      resumed: () => {
        acts = null;
      },
      run: async () => {
        const inputs = acts ?? await inputsOf(ctx, l, windows);
        const r = await finetuneBlock(ctx, l, inputs);
        acts = null;
        await releaseStreams(inputs);
        // Activations first, then the block: a finished block always has its outputs until the
        // next block is finished too (the replay in inputsOf covers the rest). Streamed runs keep
        // no activations unit (it would hold every window in host memory); a resume replays.
        if (l < cfg.layers - 1 && !streamed) {
          const data = encodeActs(r.outputs, windows.length, H, T);
          await hostMeter.during(
            data.length,
            () =>
              runner.keep(activationsUnit(l), `${finetuneUnit(l)}.acts.safetensors`, {
                data,
                info: {},
              }),
          );
        }
        acts = r.outputs;
        return {
          data: encodeSafetensors(r.codebooks),
          info: { report: r.report },
          fields: { mse: r.report.bestMse },
        };
      },
      // Measured before pruning by callers that watch the work directory: its peak.
      after: () => prune(runner, l === cfg.layers - 1 ? null : l, l),
    }));
    const results = await runner.stage("finetune", units);
    // Every block finished: no activations are needed any more (also after a resume that found
    // them all done but was killed before pruning).
    await prune(runner, null, cfg.layers - 1);
    return results.map((r) => r.info.report);
  } finally {
    if (acts) await releaseStreams(acts);
    await removeScratch(scratchDir);
  }
}

/** What every block of one finetune run shares. */
interface BlockContext {
  inp: FinetuneInput;
  T: number;
  /** Windows per step (and per forward pass when evaluating or replaying). */
  B: number;
  rope: { cos: Float32Array; sin: Float32Array };
  make: MakeActs;
  nTrain: number;
}

/** The student and teacher streams entering (or leaving) a block. */
interface Streams {
  student: Acts;
  teacher: Acts;
}

async function releaseStreams(s: Streams): Promise<void> {
  await s.student.release();
  if (s.teacher !== s.student) await s.teacher.release();
}

/**
 * The activations unit: student_out and teacher_out [windows, H, T] f32, copied from the
 * in-memory streams' windows straight into the file's bytes (one copy of both streams).
 */
function encodeActs(s: Streams, windows: number, H: number, T: number): Uint8Array {
  const pieces = (a: Acts) =>
    (a as MemActs).xs.map((x) => new Uint8Array(x.buffer, x.byteOffset, x.byteLength));
  const shape = [windows, H, T];
  return encodeSafetensors([
    { name: "student_out", dtype: "F32", shape, data: pieces(s.student) },
    { name: "teacher_out", dtype: "F32", shape, data: pieces(s.teacher) },
  ]);
}

/**
 * The inputs of block l, the next to run when blocks 0..l-1 are finished: block l-1's
 * activations unit, or (when that is gone: pruned, corrupt, an older work directory) the outputs
 * of replaying the finished blocks from the latest activations kept, or from the embeddings.
 */
async function inputsOf(ctx: BlockContext, l: number, windows: Int32Array[]): Promise<Streams> {
  const { inp, T, make } = ctx;
  const { cfg, runner } = inp;
  const H = cfg.hidden;
  let s: Streams | null = null;
  let k = l - 1;
  for (; k >= 0; k--) {
    const kept = await runner.load(activationsUnit(k), z.object({}));
    if (!kept) continue;
    const t = decodeSafetensors(kept.data, runner.work.path(`${finetuneUnit(k)}.acts.safetensors`));
    const get = (name: string) => f32(t.find((x) => x.name === name)!);
    const so = get("student_out"), to = get("teacher_out");
    s = { student: await make(), teacher: await make() };
    for (let i = 0; i < windows.length; i++) {
      // Views into the unit's bytes, read just now and owned by nothing else: no second copy.
      await s.student.put(i, so.subarray(i * H * T, (i + 1) * H * T));
      await s.teacher.put(i, to.subarray(i * H * T, (i + 1) * H * T));
    }
    break;
  }
  if (!s) {
    const table = await inp.src.tensor("model.embed_tokens.weight");
    const e = await make();
    await hostMeter.during(table.byteLength, async () => {
      for (let i = 0; i < windows.length; i++) await e.put(i, embedWindow(table, windows[i], H));
    });
    s = { student: e, teacher: e };
  }
  for (let j = k + 1; j < l; j++) {
    runner.checkpoint();
    const next = await replayBlock(ctx, j, s);
    await releaseStreams(s);
    s = next;
  }
  return s;
}

/** Block l's student on its cluster unit's codebooks and codes. */
async function studentBlock(ctx: BlockContext, l: number): Promise<StudentBlock> {
  const { gpu, cfg, src } = ctx.inp;
  const cu = await ctx.inp.clusterUnit(l);
  const books: CodebookData[] = LINEAR_KINDS.map((kind) => {
    const name = cu.find((t) => t.name.endsWith(`.${kindModule(kind)}.codebook`))!;
    const codes = cu.find((t) => t.name.endsWith(`.${kindModule(kind)}.codes`))!;
    const sh = ctx.inp.shapes[kind];
    return {
      kind,
      centroids: f32(name).slice(),
      codes: codes.dtype === "U8"
        ? codes.data
        : new Uint16Array(codes.data.buffer, codes.data.byteOffset, codes.data.byteLength / 2),
      ...sh,
    };
  });
  const pre = `model.layers.${l}`;
  return await StudentBlock.create(
    gpu,
    cfg,
    ctx.T,
    books,
    await src.tensor(`${pre}.input_layernorm.weight`),
    await src.tensor(`${pre}.post_attention_layernorm.weight`),
    ctx.rope,
    ctx.B,
  );
}

/**
 * Windows xs ([H, T] each) side by side as [H, B * T] (window w in columns w * T ..), the
 * windows past xs.length zero. One window is passed through as it is.
 */
export function packWindows(xs: Float32Array[], B: number, H: number, T: number): Float32Array {
  if (B === 1 && xs.length === 1) return xs[0];
  const N = B * T, out = new Float32Array(H * N);
  xs.forEach((x, w) => {
    for (let h = 0; h < H; h++) out.set(x.subarray(h * T, (h + 1) * T), h * N + w * T);
  });
  return out;
}

/** The first `count` windows [H, T] of y [H, B * T] (packWindows' inverse). */
export function unpackWindows(
  y: Float32Array,
  count: number,
  B: number,
  H: number,
  T: number,
): Float32Array[] {
  if (B === 1) return [y];
  const N = B * T;
  return Array.from({ length: count }, (_, w) => {
    const x = new Float32Array(H * T);
    for (let h = 0; h < H; h++) x.set(y.subarray(h * N + w * T, h * N + (w + 1) * T), h * T);
    return x;
  });
}

/** Windows i .. i + n - 1 of a stream. */
async function windowsOf(a: Acts, i: number, n: number): Promise<Float32Array[]> {
  const xs: Float32Array[] = [];
  for (let j = i; j < Math.min(a.length, i + n); j++) xs.push(await a.get(j));
  return xs;
}

/** The student on the best codebooks, over every window. */
async function studentOutputs(
  ctx: BlockContext,
  s: StudentBlock,
  best: Map<string, Float32Array>,
  inputs: Acts,
  x: Tensor,
): Promise<Acts> {
  await s.setCodebooks(best);
  const out = await ctx.make();
  const { B, T } = ctx, H = ctx.inp.cfg.hidden;
  for (let i = 0; i < inputs.length; i += B) {
    const xs = await windowsOf(inputs, i, B);
    await ctx.inp.gpu.write(x.buffer, packWindows(xs, B, H, T));
    const ys = unpackWindows(await s.forward(x, false).toF32(), xs.length, B, H, T);
    for (let w = 0; w < ys.length; w++) await out.put(i + w, ys[w]);
  }
  return out;
}

/** The finetuned codebooks of a finished block, keyed "<kind>.codebook". */
async function tunedCodebooks(ctx: BlockContext, l: number): Promise<Map<string, Float32Array>> {
  const { runner } = ctx.inp;
  const unit = finetuneUnit(l);
  const tuned = decodeSafetensors(await runner.read(unit), runner.work.path(`${unit}.safetensors`));
  return new Map(LINEAR_KINDS.map((kind) => {
    const name = `model.layers.${l}.${kindModule(kind)}.codebook`;
    return [`${kind}.codebook`, f32(tuned.find((t) => t.name === name)!).slice()];
  }));
}

/**
 * The outputs of a finished block from its inputs, without training: the teacher pass and the
 * student on the block's finetuned codebooks, the same computation that made them at the time.
 */
async function replayBlock(ctx: BlockContext, l: number, inputs: Streams): Promise<Streams> {
  const { gpu, cfg, src } = ctx.inp;
  const teacher = await teacherPass(gpu, cfg, src, l, inputs.teacher, ctx.T, ctx.rope, ctx.make);
  const best = await tunedCodebooks(ctx, l);
  const s = await studentBlock(ctx, l);
  const x = Tensor.empty(gpu, [cfg.hidden, ctx.B * ctx.T], "replay.x");
  try {
    return { student: await studentOutputs(ctx, s, best, inputs.student, x), teacher };
  } finally {
    x.release();
    s.release();
  }
}

/** What an epoch checkpoint keeps besides its tensors (checked when read back). */
const EpochInfo = z.object({
  epoch: z.number().int().nonnegative(),
  step: z.number().int().nonnegative(),
  bestMse: z.number(),
  bestEpoch: z.number().int().nonnegative(),
  stale: z.number().int().nonnegative(),
  epochMse: z.array(z.number()),
  trainLoss: z.array(z.number()),
  initialMse: z.number(),
});
type EpochInfo = z.infer<typeof EpochInfo>;

/** A block's training state between epochs: the checkpoint's facts and the best codebooks. */
interface EpochState extends EpochInfo {
  best: Map<string, Float32Array>;
}

/** The codebooks of the student as they are now. */
async function codebooksOf(s: StudentBlock): Promise<Map<string, Float32Array>> {
  return new Map([...(await s.state()).tensors].filter(([k]) => k.endsWith(".codebook")));
}

/**
 * One block's training on the GPU: the student, the teacher targets, and the window buffers.
 * Epochs are units of their own (an epoch checkpoint), so a resumed block continues after the
 * last finished epoch with the same AdamW state.
 */
class BlockTraining {
  private readonly x: Tensor;
  private readonly want: Tensor;
  private readonly want2: Tensor;
  private readonly opt: AdamWSettings;

  constructor(
    readonly ctx: BlockContext,
    readonly l: number,
    readonly s: StudentBlock,
    readonly inputs: Streams,
    readonly teacherOut: Acts,
    readonly extra: Acts | null,
  ) {
    const { gpu, cfg, settings } = ctx.inp;
    const N = ctx.B * ctx.T;
    this.x = Tensor.empty(gpu, [cfg.hidden, N], "ft.x");
    this.want = Tensor.empty(gpu, [cfg.hidden, N], "ft.target");
    this.want2 = Tensor.empty(gpu, [cfg.hidden, N], "ft.target2");
    this.opt = {
      lr: settings.lr,
      beta1: 0.9,
      beta2: 0.999,
      eps: 1e-8,
      weightDecay: settings.weightDecay,
    };
  }

  /** Windows the best epoch is chosen on: the held-out ones, else the training ones. */
  get selectIdx(): number[] {
    const n = this.inputs.student.length, nTrain = this.ctx.nTrain;
    return n > nTrain
      ? Array.from({ length: n - nTrain }, (_, i) => nTrain + i)
      : Array.from({ length: nTrain }, (_, i) => i);
  }

  /**
   * Uploads windows idx (at most B) side by side: the student inputs, the teacher targets and,
   * with `extra`, the extra term's targets; the columns of missing windows are zero.
   */
  private async load(idx: number[], extra = false): Promise<void> {
    const gpu = this.ctx.inp.gpu, { B, T } = this.ctx, H = this.ctx.inp.cfg.hidden;
    const put = async (t: Tensor, a: Acts) => {
      const xs: Float32Array[] = [];
      for (const i of idx) xs.push(await a.get(i));
      await gpu.write(t.buffer, packWindows(xs, B, H, T));
    };
    await put(this.x, this.inputs.student);
    await put(this.want, this.teacherOut);
    if (extra && this.extra) await put(this.want2, this.extra);
  }

  /** Mean per-element MSE of the student against the teacher over some windows. */
  async evalMse(idx: number[]): Promise<number> {
    const { gpu, cfg } = this.ctx.inp, s = this.s;
    const H = cfg.hidden, { T, B } = this.ctx;
    let sum = 0;
    for (let k = 0; k < idx.length; k += B) {
      const group = idx.slice(k, k + B);
      await this.load(group);
      mseGrad(gpu, s.forward(this.x, false).all, this.want.all, s.dy.all, s.sq.all, H, B * T, 0);
      // Per-token sums of the real windows, in window order.
      for (const v of (await s.sq.toF32()).subarray(0, group.length * T)) sum += v;
    }
    return sum / (idx.length * H * T);
  }

  /** The state after the last finished epoch, or the clustered block's before any. */
  async start(): Promise<EpochState> {
    const { runner } = this.ctx.inp;
    const ckpt = epochUnit(this.l);
    const prev = await runner.load(ckpt, EpochInfo);
    if (!prev) {
      const initialMse = await this.evalMse(this.selectIdx);
      return {
        epoch: 0,
        step: 0,
        bestMse: initialMse,
        bestEpoch: 0,
        stale: 0,
        epochMse: [],
        trainLoss: [],
        initialMse,
        best: await codebooksOf(this.s),
      };
    }
    const t = decodeSafetensors(
      prev.data,
      runner.work.path(`${finetuneUnit(this.l)}.epoch.safetensors`),
    );
    const pick = (best: boolean) =>
      new Map(
        t.filter((q) => q.name.startsWith("best.") === best)
          .map((q) => [best ? q.name.slice(5) : q.name, f32(q).slice()]),
      );
    await this.s.load(pick(false), prev.info.step);
    return { ...prev.info, best: pick(true) };
  }

  /**
   * One pass over the training windows in a seeded order, B windows a step (the last step filled
   * up from the start of the order); the mean of the losses read back.
   */
  async epoch(epoch: number): Promise<number> {
    const { gpu, cfg, settings, runner } = this.ctx.inp, s = this.s;
    const { T, B } = this.ctx, H = cfg.hidden, N = B * T, scale = 2 / (H * N);
    const trainIdx = Array.from({ length: this.ctx.nTrain }, (_, i) => i);
    const order = shuffle(trainIdx, new Rng(settings.seed * 7919 + this.l * 1000 + epoch));
    const steps = Math.ceil(order.length / B);
    // Mean of the losses read back (every 8th step and the last one), over those read.
    let lossSum = 0, lossCount = 0;
    for (let k = 0; k < steps; k++) {
      const idx = Array.from({ length: B }, (_, w) => order[(k * B + w) % order.length]);
      await this.load(idx, true);
      const y = s.forward(this.x, true);
      mseGrad(gpu, y.all, this.want.all, s.dy.all, s.sq.all, H, N, scale);
      if (this.extra) mseGrad(gpu, y.all, this.want2.all, s.dy.all, s.sq.all, H, N, scale, true);
      s.backward();
      s.update(this.opt);
      if (k === steps - 1 || k % 8 === 0) {
        let sq = 0;
        for (const v of await s.sq.toF32()) sq += v;
        lossSum += sq / (H * N);
        lossCount++;
        const loss = sq / (H * N);
        runner.progress.update({
          stage: "finetune",
          done: this.l,
          total: cfg.layers,
          block: this.l,
          epoch,
          step: k + 1,
          loss,
        });
      }
    }
    return lossSum / lossCount;
  }

  /** Keeps the state after an epoch: codebooks, AdamW moments, best codebooks and facts. */
  async save(st: EpochState): Promise<void> {
    const { best, ...info } = st;
    const cur = await this.s.state();
    const tensors: TensorBytes[] = [];
    for (const [name, v] of cur.tensors) tensors.push(tensorOf(name, v));
    for (const [name, v] of best) tensors.push(tensorOf(`best.${name}`, v));
    await this.ctx.inp.runner.keep(epochUnit(this.l), `${finetuneUnit(this.l)}.epoch.safetensors`, {
      data: encodeSafetensors(tensors),
      info: { ...info, step: cur.step },
    });
  }

  release(): void {
    this.x.release();
    this.want.release();
    this.want2.release();
  }

  /** The student on the best codebooks over every window: the next block's student inputs. */
  outputs(best: Map<string, Float32Array>): Promise<Acts> {
    return studentOutputs(this.ctx, this.s, best, this.inputs.student, this.x);
  }
}

/** Trains block l from its inputs; returns its best codebooks, report and outputs. */
async function finetuneBlock(
  ctx: BlockContext,
  l: number,
  inputs: Streams,
): Promise<{ codebooks: TensorBytes[]; outputs: Streams; report: BlockReport }> {
  const { gpu, cfg, src, settings, runner } = ctx.inp;
  const progress = runner.progress;
  const start = performance.now();
  const pass = (xs: Acts) => teacherPass(gpu, cfg, src, l, xs, ctx.T, ctx.rope, ctx.make);
  const teacherOut = await pass(inputs.teacher);
  const extra = settings.extraTerm ? await pass(inputs.student) : null;
  const s = await studentBlock(ctx, l);
  const b = new BlockTraining(ctx, l, s, inputs, teacherOut, extra);
  try {
    const st = await b.start();
    for (let e = st.epoch + 1; e <= settings.epochs && st.stale < settings.patience; e++) {
      runner.checkpoint();
      st.trainLoss.push(await b.epoch(e));
      const mse = await b.evalMse(b.selectIdx);
      st.epochMse.push(mse);
      st.epoch = e;
      if (mse < st.bestMse) {
        Object.assign(st, { bestMse: mse, bestEpoch: e, stale: 0, best: await codebooksOf(s) });
      } else {
        st.stale++;
      }
      await b.save(st);
      progress.update({
        stage: "epoch",
        done: e,
        total: settings.epochs,
        block: l,
        train_loss: st.trainLoss[st.trainLoss.length - 1],
        heldout_mse: mse,
      });
    }
    const student = await b.outputs(st.best);
    const codebooks = LINEAR_KINDS.map((kind) =>
      tensorOf(`model.layers.${l}.${kindModule(kind)}.codebook`, st.best.get(`${kind}.codebook`)!)
    );
    const report: BlockReport = {
      layer: l,
      initialMse: st.initialMse,
      epochMse: st.epochMse,
      trainLoss: st.trainLoss,
      bestEpoch: st.bestEpoch,
      bestMse: st.bestMse,
      steps: s.steps,
      tokens: s.steps * ctx.B * ctx.T,
      seconds: (performance.now() - start) / 1000,
    };
    return { codebooks, outputs: { student, teacher: teacherOut }, report };
  } finally {
    b.release();
    s.release();
    await extra?.release();
  }
}

function tensorOf(name: string, v: Float32Array): TensorBytes {
  return {
    name,
    dtype: "F32",
    shape: [v.length],
    data: new Uint8Array(v.buffer, v.byteOffset, v.byteLength),
  };
}

/** "self_attn.q_proj" etc. for a linear kind. */
export function kindModule(kind: LinearKind): string {
  return kind === "gate" || kind === "up" || kind === "down"
    ? `mlp.${kind}_proj`
    : `self_attn.${kind}_proj`;
}

function shuffle(xs: number[], rng: Rng): number[] {
  const a = xs.slice();
  for (let i = a.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}
