// The finetune stage: ClusComp's block-wise reconstruction. For block i the teacher is the
// full-precision block on the full-precision input; the student is the clustered block on the
// output of the already-finetuned blocks 0..i-1. Only codebooks train (AdamW on the MSE between
// the two outputs, one window per step); the best epoch on held-out windows is kept.
import type { Gpu } from "../gpu/device.ts";
import { Tensor } from "../gpu/tensor.ts";
import { LINEAR_KINDS, type LinearKind, type ModelConfig, ropeInvFreq } from "../io/config.ts";
import { decodeSafetensors, encodeSafetensors } from "../io/safetensors.ts";
import { mseGrad } from "../kernels/mse.ts";
import { ropeTables } from "../kernels/rope.ts";
import { BlockScratch, forwardBlock, releaseBlock, uploadBlock } from "../model/block.ts";
import type { WeightSource } from "../model/weights.ts";
import type { TensorBytes } from "../format/compressed.ts";
import type { Progress } from "../util/progress.ts";
import type { WorkDir } from "../io/workdir.ts";
import { Rng } from "../util/rng.ts";
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

/** Feature-major [H, T] embeddings of one window, gathered on the host. */
function embedWindow(table: Float32Array, ids: Int32Array, H: number): Float32Array {
  const T = ids.length, x = new Float32Array(H * T);
  for (let t = 0; t < T; t++) {
    const row = ids[t] * H;
    for (let h = 0; h < H; h++) x[h * T + t] = table[row + h];
  }
  return x;
}

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
  work: WorkDir;
  /** The cluster stage's unit for a block: f32 codebooks and codes. */
  clusterUnit: (layer: number) => Promise<TensorBytes[]>;
  /** Per-kind (n, d, splits). */
  shapes: Record<LinearKind, { n: number; d: number; splits: number }>;
  train: Int32Array[];
  heldOut: Int32Array[];
  settings: FinetuneSettings;
  progress: Progress;
  /** Called at each unit boundary (block, epoch); throws to stop there (time budget, signal). */
  checkpoint?: () => void;
}

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
async function prune(work: WorkDir, keep: number | null, done: number): Promise<void> {
  const drop = Object.keys(work.units()).filter((u) => {
    const m = /^finetune\/block-(\d+)\/(acts|epoch)$/.exec(u);
    if (!m) return false;
    const l = Number(m[1]);
    return m[2] === "acts" ? l !== keep : l <= done;
  });
  await work.remove(drop);
}

/**
 * Finetunes every block in order, resuming from the work directory. Returns per-block reports.
 * A finished block keeps only its codebooks and report; its outputs (the next block's inputs)
 * stay until the next block is finished, and its epoch checkpoint is dropped when it finishes,
 * so the work directory holds at most two blocks' activations (one between hand-overs).
 */
export async function finetune(inp: FinetuneInput): Promise<BlockReport[]> {
  const { cfg, src, work, progress } = inp;
  const H = cfg.hidden, T = inp.train[0].length;
  const windows = [...inp.train, ...inp.heldOut];
  const nTrain = inp.train.length;
  const reports: BlockReport[] = [];
  const rope = ropeTables(ropeInvFreq(cfg), T);
  // Under a host-memory cap the two streams go through files, one per window.
  const cap = inp.settings.hostBudget;
  const streamBytes = 2 * windows.length * H * T * 4;
  const streamed = cap !== undefined && streamBytes > cap;
  const scratchDir = work.path("finetune/streams");
  let serial = 0;
  const make: MakeActs = async () =>
    streamed
      ? await DiskActs.create(`${scratchDir}/${serial++}`, windows.length)
      : new MemActs(windows.length);
  let student: Acts = new MemActs(0), teacher: Acts = student;
  const release = async (a: Acts, b: Acts) => {
    await a.release();
    if (b !== a) await b.release();
  };
  await removeScratch(scratchDir);
  if (streamed) {
    progress.note(
      "finetune",
      `activations streamed through ${scratchDir}: ${
        (streamBytes / 2 ** 20).toFixed(1)
      } MiB of student and teacher streams over the host cap of ${(cap / 2 ** 20).toFixed(1)} MiB`,
    );
  }
  // Blocks 0..l-1 are finished when block l is the next to run; its inputs are block l-1's
  // activations unit, or (when that is gone: pruned, corrupt, an older work directory) the
  // outputs of replaying the finished blocks from the latest activations kept, or from the
  // embeddings.
  let ready = false;
  const unpack = async (data: Uint8Array, file: string) => {
    const t = decodeSafetensors(data, file);
    const get = (name: string) => f32(t.find((x) => x.name === name)!);
    const so = get("student_out"), to = get("teacher_out");
    const s = await make(), te = await make();
    for (let i = 0; i < windows.length; i++) {
      // Views into the unit's bytes, read just now and owned by nothing else: no second copy.
      await s.put(i, so.subarray(i * H * T, (i + 1) * H * T));
      await te.put(i, to.subarray(i * H * T, (i + 1) * H * T));
    }
    student = s;
    teacher = te;
  };
  const inputsOf = async (l: number) => {
    let k = l - 1;
    while (k >= 0) {
      const acts = await work.load(activationsUnit(k));
      if (acts) {
        await unpack(acts.data, work.path(acts.record.file));
        break;
      }
      k--;
    }
    if (k < 0) {
      const table = await src.tensor("model.embed_tokens.weight");
      const e = await make();
      for (let i = 0; i < windows.length; i++) await e.put(i, embedWindow(table, windows[i], H));
      student = teacher = e;
    }
    for (let j = k + 1; j < l; j++) {
      inp.checkpoint?.();
      const r = await replayBlock(inp, j, student, teacher, T, rope, make);
      await release(student, teacher);
      student = r.studentOut;
      teacher = r.teacherOut;
    }
  };

  try {
    for (let l = 0; l < cfg.layers; l++) {
      const unit = finetuneUnit(l);
      const done = await work.done(unit);
      if (done) {
        ready = false;
        reports.push(done.info!.report as BlockReport);
        progress.update({
          stage: "finetune",
          done: l + 1,
          total: cfg.layers,
          block: l,
          resumed: "yes",
        });
        continue;
      }
      if (!ready) {
        await inputsOf(l);
        ready = true;
      }
      inp.checkpoint?.();
      const r = await finetuneBlock(inp, l, student, teacher, nTrain, T, rope, make);
      const oldStudent = student, oldTeacher = teacher;
      student = r.studentOut;
      teacher = r.teacherOut;
      const stack = (a: Acts) => {
        const xs = (a as MemActs).xs;
        const out = new Float32Array(xs.length * H * T);
        xs.forEach((x, i) => out.set(x, i * H * T));
        return new Uint8Array(out.buffer);
      };
      // Activations first, then the block: a finished block always has its outputs until the next
      // block is finished too (the replay above covers the rest). Streamed runs keep no
      // activations unit (it would hold every window in host memory); a resume replays instead.
      const last = l === cfg.layers - 1;
      if (!last && !streamed) {
        const acts: TensorBytes[] = [
          {
            name: "student_out",
            dtype: "F32",
            shape: [windows.length, H, T],
            data: stack(student),
          },
          {
            name: "teacher_out",
            dtype: "F32",
            shape: [windows.length, H, T],
            data: stack(teacher),
          },
        ];
        await work.complete(
          activationsUnit(l),
          `${finetuneUnit(l)}.acts.safetensors`,
          encodeSafetensors(acts),
        );
      }
      await work.complete(unit, `${unit}.safetensors`, encodeSafetensors(r.codebooks), {
        report: r.report,
      });
      // The block's inputs are done with once its unit is (their scratch files go).
      await release(oldStudent, oldTeacher);
      reports.push(r.report);
      // Reported before pruning: a caller that measures the work directory here sees its peak.
      progress.update({
        stage: "finetune",
        done: l + 1,
        total: cfg.layers,
        block: l,
        mse: r.report.bestMse,
      });
      await prune(work, last ? null : l, l);
    }
  } finally {
    await removeScratch(scratchDir);
  }
  // Every block finished: no activations are needed any more (also after a resume that found
  // them all done but was killed before pruning).
  await prune(work, null, cfg.layers - 1);
  return reports;
}

/** Block l's student on its cluster unit's codebooks and codes. */
async function studentBlock(
  inp: FinetuneInput,
  l: number,
  T: number,
  rope: { cos: Float32Array; sin: Float32Array },
): Promise<StudentBlock> {
  const { gpu, cfg, src } = inp;
  const cu = await inp.clusterUnit(l);
  const books: CodebookData[] = LINEAR_KINDS.map((kind) => {
    const name = cu.find((t) => t.name.endsWith(`.${kindModule(kind)}.codebook`))!;
    const codes = cu.find((t) => t.name.endsWith(`.${kindModule(kind)}.codes`))!;
    const sh = inp.shapes[kind];
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
    T,
    books,
    await src.tensor(`${pre}.input_layernorm.weight`),
    await src.tensor(`${pre}.post_attention_layernorm.weight`),
    rope,
  );
}

/** The student on the best codebooks, over every window. */
async function studentOutputs(
  inp: FinetuneInput,
  s: StudentBlock,
  best: Map<string, Float32Array>,
  inputs: Acts,
  x: Tensor,
  make: MakeActs,
): Promise<Acts> {
  await s.setCodebooks(best);
  const out = await make();
  for (let i = 0; i < inputs.length; i++) {
    await inp.gpu.write(x.buffer, await inputs.get(i));
    await out.put(i, await s.forward(x, false).toF32());
  }
  return out;
}

/**
 * The outputs of a finished block from its inputs, without training: the teacher pass and the
 * student on the block's finetuned codebooks, the same computation that made them at the time.
 */
async function replayBlock(
  inp: FinetuneInput,
  l: number,
  studentIn: Acts,
  teacherIn: Acts,
  T: number,
  rope: { cos: Float32Array; sin: Float32Array },
  make: MakeActs,
): Promise<{ studentOut: Acts; teacherOut: Acts }> {
  const { gpu, cfg, src, work } = inp;
  const teacherOut = await teacherPass(gpu, cfg, src, l, teacherIn, T, rope, make);
  const unit = finetuneUnit(l);
  const tuned = decodeSafetensors(await work.read(unit), work.path(`${unit}.safetensors`));
  const best = new Map(LINEAR_KINDS.map((kind) => {
    const name = `model.layers.${l}.${kindModule(kind)}.codebook`;
    return [`${kind}.codebook`, f32(tuned.find((t) => t.name === name)!).slice()];
  }));
  const s = await studentBlock(inp, l, T, rope);
  const x = Tensor.empty(gpu, [cfg.hidden, T], "replay.x");
  try {
    return { studentOut: await studentOutputs(inp, s, best, studentIn, x, make), teacherOut };
  } finally {
    x.release();
    s.release();
  }
}

async function finetuneBlock(
  inp: FinetuneInput,
  l: number,
  studentIn: Acts,
  teacherIn: Acts,
  nTrain: number,
  T: number,
  rope: { cos: Float32Array; sin: Float32Array },
  make: MakeActs,
): Promise<
  {
    codebooks: TensorBytes[];
    studentOut: Acts;
    teacherOut: Acts;
    report: BlockReport;
  }
> {
  const { gpu, cfg, src, work, settings, progress } = inp;
  const H = cfg.hidden, start = performance.now();
  const teacherOut = await teacherPass(gpu, cfg, src, l, teacherIn, T, rope, make);
  const extra = settings.extraTerm
    ? await teacherPass(gpu, cfg, src, l, studentIn, T, rope, make)
    : null;

  const s = await studentBlock(inp, l, T, rope);
  const x = Tensor.empty(gpu, [H, T], "ft.x");
  const want = Tensor.empty(gpu, [H, T], "ft.target");
  const want2 = Tensor.empty(gpu, [H, T], "ft.target2");
  const scale = 2 / (H * T);
  const opt: AdamWSettings = {
    lr: settings.lr,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weightDecay: settings.weightDecay,
  };
  // Mean per-element MSE of the student against the teacher over some windows.
  const evalMse = async (idx: number[]): Promise<number> => {
    let sum = 0;
    for (const i of idx) {
      await gpu.write(x.buffer, await studentIn.get(i));
      await gpu.write(want.buffer, await teacherOut.get(i));
      const y = s.forward(x, false);
      mseGrad(gpu, y.all, want.all, s.dy.all, s.sq.all, H, T, 0);
      for (const v of await s.sq.toF32()) sum += v;
    }
    return sum / (idx.length * H * T);
  };
  const heldIdx = Array.from({ length: studentIn.length - nTrain }, (_, i) => nTrain + i);
  const trainIdx = Array.from({ length: nTrain }, (_, i) => i);
  const selectIdx = heldIdx.length > 0 ? heldIdx : trainIdx;

  const ckpt = epochUnit(l);
  let epoch0 = 0, best: Map<string, Float32Array>, bestMse: number, bestEpoch = 0, stale = 0;
  let epochMse: number[] = [], trainLoss: number[] = [];
  let initialMse: number;
  const prev = await work.done(ckpt);
  try {
    if (prev) {
      const t = decodeSafetensors(await work.read(ckpt), work.path(prev.file));
      const state = new Map(
        t.filter((q) => !q.name.startsWith("best.")).map((q) => [q.name, f32(q).slice()]),
      );
      best = new Map(
        t.filter((q) => q.name.startsWith("best.")).map((q) => [q.name.slice(5), f32(q).slice()]),
      );
      const info = prev.info as {
        epoch: number;
        step: number;
        bestMse: number;
        bestEpoch: number;
        stale: number;
        epochMse: number[];
        trainLoss: number[];
        initialMse: number;
      };
      await s.load(state, info.step);
      epoch0 = info.epoch;
      bestMse = info.bestMse;
      bestEpoch = info.bestEpoch;
      stale = info.stale;
      epochMse = info.epochMse;
      trainLoss = info.trainLoss;
      initialMse = info.initialMse;
    } else {
      initialMse = await evalMse(selectIdx);
      bestMse = initialMse;
      best = new Map([...(await s.state()).tensors].filter(([k]) => k.endsWith(".codebook")));
    }
    for (let epoch = epoch0 + 1; epoch <= settings.epochs && stale < settings.patience; epoch++) {
      inp.checkpoint?.();
      const order = shuffle(trainIdx, new Rng(settings.seed * 7919 + l * 1000 + epoch));
      // Mean of the losses read back (every 8th step and the last one), over those read.
      let lossSum = 0, lossCount = 0;
      for (let k = 0; k < order.length; k++) {
        const i = order[k];
        await gpu.write(x.buffer, await studentIn.get(i));
        await gpu.write(want.buffer, await teacherOut.get(i));
        const y = s.forward(x, true);
        mseGrad(gpu, y.all, want.all, s.dy.all, s.sq.all, H, T, scale);
        if (extra) {
          await gpu.write(want2.buffer, await extra.get(i));
          mseGrad(gpu, y.all, want2.all, s.dy.all, s.sq.all, H, T, scale, true);
        }
        s.backward();
        s.update(opt);
        if (k === order.length - 1 || k % 8 === 0) {
          let sq = 0;
          for (const v of await s.sq.toF32()) sq += v;
          lossSum += sq / (H * T);
          lossCount++;
          progress.update({
            stage: "finetune",
            done: l,
            total: cfg.layers,
            block: l,
            epoch,
            step: k + 1,
            loss: sq / (H * T),
          });
        }
      }
      trainLoss.push(lossSum / lossCount);
      const mse = await evalMse(selectIdx);
      epochMse.push(mse);
      if (mse < bestMse) {
        bestMse = mse;
        bestEpoch = epoch;
        stale = 0;
        best = new Map([...(await s.state()).tensors].filter(([k]) => k.endsWith(".codebook")));
      } else {
        stale++;
      }
      const st = await s.state();
      const tensors: TensorBytes[] = [];
      for (const [name, v] of st.tensors) tensors.push(tensorOf(name, v));
      for (const [name, v] of best) tensors.push(tensorOf(`best.${name}`, v));
      await work.complete(
        ckpt,
        `${finetuneUnit(l)}.epoch.safetensors`,
        encodeSafetensors(tensors),
        {
          epoch,
          step: st.step,
          bestMse,
          bestEpoch,
          stale,
          epochMse,
          trainLoss,
          initialMse,
        },
      );
      progress.update({
        stage: "epoch",
        done: epoch,
        total: settings.epochs,
        block: l,
        train_loss: trainLoss[trainLoss.length - 1],
        heldout_mse: mse,
      });
    }
    // The best epoch's codebooks produce the student outputs for the next block.
    const studentOut = await studentOutputs(inp, s, best, studentIn, x, make);
    const codebooks: TensorBytes[] = [];
    for (const kind of LINEAR_KINDS) {
      const v = best.get(`${kind}.codebook`)!;
      codebooks.push(tensorOf(`model.layers.${l}.${kindModule(kind)}.codebook`, v));
    }
    const report: BlockReport = {
      layer: l,
      initialMse,
      epochMse,
      trainLoss,
      bestEpoch,
      bestMse,
      steps: s.steps,
      tokens: s.steps * T,
      seconds: (performance.now() - start) / 1000,
    };
    return { codebooks, studentOut, teacherOut, report };
  } finally {
    x.release();
    want.release();
    want2.release();
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
