// The memory plan against the peak GPU bytes the stages actually hold and the work directory's
// peak on disk (on the embedded kjv-llama, and on both ../shared fixtures when present), and the
// generate, eval and disk rows' arithmetic.
import assert from "node:assert/strict";
import { evaluatePerplexity } from "../../src/eval/perplexity.ts";
import { getGpu } from "../../src/gpu/device.ts";
import { linearNames, loadConfig, loadConfigFile, type ModelConfig } from "../../src/io/config.ts";
import { BlockScratch } from "../../src/model/block.ts";
import { compress } from "../../src/pipeline/compress.ts";
import { join } from "node:path";
import { type MemoryPlanSettings, planMemory, workDirBytes } from "../../src/pipeline/memplan.ts";
import { Progress, type ProgressEvent } from "../../src/util/progress.ts";
import { HAS_SHARED, STORIES, TINYLLAMA, TINYSTORIES, WIKI } from "../shared.ts";

const KJV = new URL("../../fixtures/kjv-llama", import.meta.url).pathname;

/** Bytes of every file under `dir`. */
function dirBytes(dir: string): number {
  let bytes = 0;
  for (const e of Deno.readDirSync(dir)) {
    const p = join(dir, e.name);
    bytes += e.isDirectory ? dirBytes(p) : e.isFile ? Deno.statSync(p).size : 0;
  }
  return bytes;
}

/** Prints nothing; measures the work directory at each finished unit (the finetune stage
 * reports a block before it prunes the previous block's activations: the peak). */
class DiskPeak extends Progress {
  peak = 0;
  constructor(readonly work: string) {
    super(true);
  }
  override update(e: ProgressEvent): void {
    if ("step" in e || "iter" in e || !("block" in e)) return;
    this.peak = Math.max(this.peak, dirBytes(this.work));
  }
}

const MODELS = [
  { model: KJV, calib: `${KJV}/calib.txt`, text: `${KJV}/heldout.txt`, shared: false },
  { model: STORIES, calib: TINYSTORIES, text: WIKI, shared: true },
  { model: TINYLLAMA, calib: TINYSTORIES, text: WIKI, shared: true },
];

for (const { model, calib, text, shared } of MODELS) {
  const name = model.split("/").pop();
  Deno.test({
    name: `${name}: planned GPU, disk and finetune host peaks are within 10% of the measured peaks`,
    ignore: shared && !HAS_SHARED,
    fn: async () => {
      const gpu = await getGpu();
      const cfg = await loadConfig(model);
      const dir = await Deno.makeTempDir({ prefix: "cluscomp-memplan-" });
      const [d, n, samples, seqlen, evalSeqlen, windows] = [4, 256, 16, 64, 128, 8];
      const disk = new DiskPeak(`${dir}/work`);
      const r = await compress({
        model,
        out: `${dir}/out`,
        work: `${dir}/work`,
        method: "cluscomp",
        cluster: {
          d,
          n,
          overrides: {},
          splits: 1,
          codebookDtype: "f16",
          iters: 3,
          seed: 0,
          init: "random",
          restarts: 1,
        },
        rtn: { bits: 4, group: 128 },
        finetune: {
          calib,
          samples,
          seqlen,
          holdout: 0.1,
          train: { epochs: 1, lr: 1e-4, weightDecay: 0.1, patience: 2, extraTerm: false, seed: 0 },
        },
        eval: { text, seqlen: evalSeqlen, maxWindows: windows },
        gpuBudget: 2 ** 31,
      }, disk);
      // The compressed model's evaluation alone (compress's eval stage also holds the original).
      gpu.bytesPeak = gpu.bytesLive;
      const before = gpu.bytesLive;
      await evaluatePerplexity({
        model: `${dir}/out`,
        text,
        seqlen: evalSeqlen,
        maxWindows: windows,
        gpuBudget: 2 ** 31,
      });
      const compressedEval = gpu.bytesPeak - before;
      const plan = planMemory(cfg, {
        d,
        n,
        splits: 1,
        calibSamples: samples,
        calibSeqlen: seqlen,
        evalSeqlen,
        evalTokens: windows * evalSeqlen,
        gpuMemory: 2 ** 31,
        maxBinding: gpu.limits.maxBinding,
        finetune: true,
        extraTerm: false,
      });
      const planned = (stage: string) => plan.find((p) => p.stage === stage)!.gpu_bytes;
      const checks: [string, number, number][] = [
        ["cluster", planned("cluster"), r.gpu_peak.cluster],
        ["finetune", planned("finetune"), r.gpu_peak.finetune],
        // compress evaluates the original and the compressed model
        ["eval stage", Math.max(planned("eval"), planned("eval-original")), r.gpu_peak.eval],
        ["eval (compressed)", planned("eval"), compressedEval],
        ["work directory", plan.find((p) => p.stage === "finetune")!.disk_bytes, disk.peak],
        // The host meter's count of the arrays finetuning holds (activation streams, a matrix
        // being uploaded, the activations unit being written).
        [
          "finetune host",
          plan.find((p) => p.stage === "finetune")!.host_bytes,
          r.host_peak.finetune,
        ],
      ];
      const rows: string[] = [];
      let bad = "";
      for (const [stage, p, measured] of checks) {
        // Both 0 (a stage that held nothing, e.g. clustering on the host) is exact.
        const err = p === measured ? 0 : Math.abs(p - measured) / measured;
        rows.push(`${stage}: planned ${p} measured ${measured} (${(100 * err).toFixed(1)}%)`);
        if (!(err <= 0.1)) bad += `${stage} off by ${(100 * err).toFixed(1)}%; `;
      }
      console.log(`${name}\n  ${rows.join("\n  ")}`);
      await Deno.remove(dir, { recursive: true });
      if (bad) throw new Error(`${name}: ${bad}\n${rows.join("\n")}`);
    },
  });
}

const SETTINGS: MemoryPlanSettings = {
  d: 4,
  n: 200,
  splits: 2,
  calibSamples: 16,
  calibSeqlen: 64,
  evalSeqlen: 128,
  evalTokens: 8 * 128,
  gpuMemory: 2 ** 31,
  maxBinding: 2 ** 27,
  finetune: false,
  extraTerm: false,
};

/** One compressed block, counted from the definition: 8-bit codes packed, f32 centroids. */
function compressedBlock(cfg: ModelConfig, d: number, n: number, splits: number): number {
  const bits = Math.ceil(Math.log2(n));
  let bytes = 2 * cfg.hidden * 4;
  for (const lin of linearNames(0, cfg)) {
    const codes = lin.in * Math.ceil(lin.out / d);
    bytes += Math.max(16, Math.ceil((codes * bits) / 32) * 4) + splits * n * d * 4;
  }
  return bytes;
}

Deno.test("memplan: generate = compressed weights + KV cache + prefill-chunk scratch + logits", async () => {
  const cfg = await loadConfig(KJV);
  assert.equal(cfg.tieEmbeddings, false);
  const block = compressedBlock(cfg, SETTINGS.d, SETTINGS.n, SETTINGS.splits);
  for (const context of [undefined, 100]) {
    const T = context ?? cfg.maxPositions;
    const plan = planMemory(cfg, { ...SETTINGS, context });
    const g = plan.find((p) => p.stage === "generate")!;
    const weights = cfg.layers * block + 2 * cfg.vocab * cfg.hidden * 4 + cfg.hidden * 4;
    const kv = 2 * cfg.layers * cfg.kvHeads * cfg.headDim * T * 4;
    // Prefill in chunks of up to 256 tokens: block scratch (rope tables included), scores, x,
    // ids, logits.
    const chunk = Math.min(T, 256), heads = cfg.heads;
    const scratch = BlockScratch.bytes(cfg, 1, chunk, SETTINGS.maxBinding) +
      (heads * T * chunk + cfg.hidden * chunk + chunk + cfg.vocab) * 4;
    assert.equal(g.gpu_bytes, weights + kv + scratch, `context ${T}`);
    assert.ok(g.note.includes(`context ${T}`), g.note);
  }
  // Tied embeddings: no separate lm_head.
  const tied = { ...cfg, tieEmbeddings: true };
  const a = planMemory(cfg, SETTINGS).find((p) => p.stage === "generate")!.gpu_bytes;
  const b = planMemory(tied, SETTINGS).find((p) => p.stage === "generate")!.gpu_bytes;
  assert.equal(a - b, cfg.vocab * cfg.hidden * 4);
  // A context too long for the memory does not fit.
  const long = planMemory(cfg, { ...SETTINGS, context: 4_194_304 });
  assert.equal(long.find((p) => p.stage === "generate")!.fits, false);
});

Deno.test("memplan: the eval row holds compressed blocks, eval-original dense ones", async () => {
  const cfg = await loadConfig(KJV);
  const plan = planMemory(cfg, SETTINGS);
  const ev = plan.find((p) => p.stage === "eval")!;
  const orig = plan.find((p) => p.stage === "eval-original")!;
  assert.ok(ev.note.includes("all blocks resident") && orig.note.includes("all blocks resident"));
  // Both resident with room for every batch: they differ by the blocks alone.
  const dense = (2 * cfg.hidden + linearNames(0, cfg).reduce((a, l) => a + l.in * l.out, 0)) * 4;
  const block = compressedBlock(cfg, SETTINGS.d, SETTINGS.n, SETTINGS.splits);
  assert.equal(orig.gpu_bytes - ev.gpu_bytes, cfg.layers * (dense - block));
});

Deno.test("memplan: disk = cluster units + codebooks + a checkpoint + two blocks' activations", async () => {
  const cfg = await loadConfig(KJV);
  const s = { ...SETTINGS, finetune: true };
  const w = workDirBytes(cfg, s);
  const lins = linearNames(0, cfg);
  const book = s.splits * s.n * s.d * 4;
  // n = 200 fits U8 codes; every tensor counts a 96-byte header share.
  const codes = lins.reduce((a, l) => a + l.in * Math.ceil(l.out / s.d), 0);
  assert.equal(w.cluster, cfg.layers * (lins.length * (book + 2 * 96) + codes));
  assert.equal(w.codebooks, lins.length * (book + 96));
  assert.equal(w.checkpoint, 4 * w.codebooks);
  assert.equal(w.activations, 2 * s.calibSamples * cfg.hidden * s.calibSeqlen * 4 + 2 * 96);
  assert.equal(w.activationBlocks, 2);
  assert.equal(w.finetunePeak - w.after, w.checkpoint + 2 * w.activations);
  assert.equal(workDirBytes({ ...cfg, layers: 1 }, s).activationBlocks, 0);
  // U16 codes above 256 centroids.
  const wide = workDirBytes(cfg, { ...s, n: 300 });
  assert.equal(wide.cluster - w.cluster, cfg.layers * (codes + lins.length * 100 * s.d * 4 * 2));

  const plan = planMemory(cfg, s);
  const row = (p: typeof plan, stage: string) => p.find((r) => r.stage === stage)!;
  assert.equal(row(plan, "cluster").disk_bytes, w.cluster);
  assert.equal(row(plan, "finetune").disk_bytes, w.finetunePeak);
  assert.equal(row(plan, "generate").disk_bytes, 0);
  assert.equal(
    row(planMemory(cfg, SETTINGS), "finetune"),
    undefined,
    "no finetune row without finetuning",
  );
  // `fits` is GPU-only unless a disk size is given.
  assert.ok(plan.every((r) => r.fits));
  const small = planMemory(cfg, { ...s, disk: w.finetunePeak - 1 });
  assert.equal(row(small, "finetune").fits, false);
  assert.equal(row(small, "cluster").fits, true);
  assert.ok(planMemory(cfg, { ...s, disk: w.finetunePeak }).every((r) => r.fits));
});

Deno.test("memplan: a host-memory cap below the activation streams leaves a few windows on the host", async () => {
  const cfg = await loadConfig(KJV);
  const s = { ...SETTINGS, finetune: true };
  const row = (p: ReturnType<typeof planMemory>) => p.find((r) => r.stage === "finetune")!;
  const stream = s.calibSamples * cfg.hidden * s.calibSeqlen * 4;
  const window = cfg.hidden * s.calibSeqlen * 4;
  const free = row(planMemory(cfg, s));
  // A cap the two streams fit in changes nothing.
  assert.deepEqual(row(planMemory(cfg, { ...s, hostMemory: 2 * stream })), free);
  const capped = row(planMemory(cfg, { ...s, hostMemory: 2 * stream - 1 }));
  // Uncapped: four streams at a block's end (the extra term's targets make five); capped: the
  // windows of one step, and the largest of a weight matrix and the embedding table.
  const e = s.extraTerm ? 1 : 0;
  assert.equal(free.host_bytes, Math.max((4 + e) * stream, cfg.vocab * cfg.hidden * 4 + stream));
  const matrix = Math.max(...linearNames(0, cfg).map((l) => l.in * l.out * 4));
  const table = cfg.vocab * cfg.hidden * 4;
  assert.equal(capped.host_bytes, (3 + e) * window + Math.max(matrix, table));
  assert.ok(capped.note.includes("streamed"), capped.note);
  assert.equal(capped.gpu_bytes, free.gpu_bytes);
  assert.equal(capped.disk_bytes, free.disk_bytes);
});

Deno.test("memplan: whole-model training of Llama-2-70B fits 48 GB with the code indexes on the host", async () => {
  const root = new URL("../../fixtures/configs/", import.meta.url).pathname;
  const plan = (file: string) =>
    loadConfigFile(`${root}${file}`).then((cfg) =>
      planMemory(cfg, {
        ...SETTINGS,
        d: 8,
        n: 65536,
        splits: 1,
        gpuMemory: 48e9,
        maxBinding: 2 ** 31,
        train: { seqlen: 512, windows: 1000, topk: 64, batch: 8 },
      }).find((p) => p.stage === "train")!
    );
  const big = await plan("llama-2-70b.json");
  assert.ok(big.fits && big.gpu_bytes <= 48e9, `70B train row: ${big.gpu_bytes} bytes`);
  assert.match(big.note, /code indexes on the host/);
  const small = await plan("llama-2-7b.json");
  assert.ok(small.fits);
  assert.match(small.note, /code indexes on the GPU/);
});
