// Whole-model codebook training on a compressed kjv-llama (tests/model/compressed_folder.ts):
// codebook and norm gradients against the dense Trainer's weight gradients reduced over the
// codes, the held-out NLL falls with training (and not with lr 0), masked positions contribute
// nothing, a one-hot teacher equals hard CE, state()/load() round-trips, layer-major passes and
// host-held code indexes (indexOnHost) give byte-identical results to one window at a time with
// resident indexes, gpuBytes / hostBytes match what the trainer allocates in both modes, and
// Llama-2-70B fits 48 GB with indexOnHost.
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { getGpu } from "../../src/gpu/device.ts";
import { type LinearKind, linearNames, loadConfigFile } from "../../src/io/config.ts";
import { Tokenizer } from "../../src/io/tokenizer.ts";
import { openModel } from "../../src/format/open.ts";
import type { ClusterModule } from "../../src/format/compressed.ts";
import { unpackCodes } from "../../src/io/pack.ts";
import {
  CodebookTrainer,
  type CodebookTrainOptions,
  type TrainWindow,
} from "../../src/train/codebook_trainer.ts";
import { Trainer } from "../../src/train/trainer.ts";
import { transpose } from "../../src/util/matrix.ts";
import { compressedFolder } from "../model/compressed_folder.ts";
import { KJV } from "../settings.ts";
import { assertClose } from "../util.ts";

const T = 32;

async function windows(file: string, count: number, skip = 0): Promise<TrainWindow[]> {
  const tok = await Tokenizer.load(KJV);
  const ids = tok.encode(await Deno.readTextFile(`${KJV}/${file}`));
  const out: TrainWindow[] = [];
  for (let i = skip; i < skip + count; i++) {
    const a = i * T;
    if (a + T + 1 > ids.length) throw new Error(`${file} is too short for ${count} windows`);
    out.push({ ids: Int32Array.from(ids.subarray(a, a + T + 1)) });
  }
  return out;
}

/** Reference codebook gradient: dense dW (HF [out, in]) summed over the entries' positions. */
function reduceToCodebook(
  dW: Float32Array,
  codes: Uint32Array,
  m: ClusterModule,
  inDim: number,
  out: number,
): Float32Array {
  const { d, n, splits } = m;
  const dWT = transpose(dW, out, inDim);
  const cols = Math.ceil(out / d), rowsPer = inDim / splits;
  const g = new Float64Array(splits * n * d);
  for (let r = 0; r < inDim; r++) {
    const base = Math.floor(r / rowsPer) * n;
    for (let cv = 0; cv < cols; cv++) {
      const k = base + codes[r * cols + cv];
      for (let j = 0; j < d && cv * d + j < out; j++) g[k * d + j] += dWT[r * out + cv * d + j];
    }
  }
  return Float32Array.from(g);
}

function maxAbs(a: Float32Array): number {
  let m = 0;
  for (const v of a) m = Math.max(m, Math.abs(v));
  return m;
}

Deno.test("codebook, norm and head gradients equal the dense trainer's, reduced over the codes", async () => {
  const gpu = await getGpu();
  const dir = await compressedFolder(KJV);
  const batch = await windows("calib.txt", 2);
  const tr = await CodebookTrainer.fromFolder(gpu, dir, {
    seqlen: T,
    trainNorms: true,
    trainHead: true,
  });
  const dense = new Map<string, Float32Array>();
  const m = await openModel(dir);
  const cfg = m.cfg;
  try {
    const loss = await tr.computeGradients(batch);
    for (let l = 0; l < cfg.layers; l++) {
      for (const lin of linearNames(l, cfg)) {
        dense.set(lin.name, transpose(await m.source.linearT(l, lin.kind), lin.in, lin.out));
      }
      for (const n of ["input_layernorm", "post_attention_layernorm"]) {
        const name = `model.layers.${l}.${n}.weight`;
        dense.set(name, await m.source.tensor(name));
      }
    }
    for (const name of ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]) {
      dense.set(name, await m.source.tensor(name));
    }
    const ref = await Trainer.fromWeights(gpu, cfg, { seqlen: T, seed: 0 }, dense);
    try {
      const refLoss = await ref.computeGradients(batch.map((w) => w.ids));
      assert.ok(Math.abs(loss - refLoss) < 1e-4 * refLoss, `loss ${loss} vs dense ${refLoss}`);
      for (let l = 0; l < cfg.layers; l++) {
        for (const lin of linearNames(l, cfg)) {
          const module = lin.name.replace(/\.weight$/, "");
          const cm = m.quant!.modules[module] as ClusterModule;
          const c = (await m.source.codebook!(l, lin.kind))!;
          const codes = unpackCodes(c.codes, lin.in * Math.ceil(lin.out / c.d), c.bits);
          const want = reduceToCodebook(await ref.gradient(lin.name), codes, cm, lin.in, lin.out);
          const got = await tr.gradient(`${module}.codebook`);
          assertClose(got, want, 2e-3 * maxAbs(want), 2e-3, `${module}.codebook grad`);
        }
        for (const n of ["input_layernorm", "post_attention_layernorm"]) {
          const name = `model.layers.${l}.${n}.weight`;
          const want = await ref.gradient(name);
          assertClose(await tr.gradient(name), want, 2e-3 * maxAbs(want), 2e-3, name);
        }
      }
      for (const name of ["model.norm.weight", "lm_head.weight"]) {
        const want = await ref.gradient(name);
        assertClose(await tr.gradient(name), want, 2e-3 * maxAbs(want), 2e-3, name);
      }
    } finally {
      ref.release();
    }
  } finally {
    tr.release();
  }
});

Deno.test("training lowers the held-out NLL; lr 0 does not", async () => {
  const gpu = await getGpu();
  const dir = await compressedFolder(KJV);
  const train = await windows("calib.txt", 6, 2);
  const held = await windows("heldout.txt", 3);
  for (const lr of [2e-3, 0]) {
    const tr = await CodebookTrainer.fromFolder(gpu, dir, { seqlen: T });
    try {
      const before = await tr.evaluate(held);
      assert.equal(before.tokens, 3 * T);
      for (let s = 0; s < 3; s++) await tr.step(train.slice(2 * s, 2 * s + 2), lr);
      const after = await tr.evaluate(held);
      if (lr > 0) {
        assert.ok(after.nll < before.nll, `lr ${lr}: NLL ${before.nll} -> ${after.nll}`);
      } else {
        assert.equal(after.nll, before.nll, `lr 0 changed the NLL ${before.nll} -> ${after.nll}`);
      }
    } finally {
      tr.release();
    }
  }
});

Deno.test("masked positions contribute nothing to the loss or the gradients", async () => {
  const gpu = await getGpu();
  const dir = await compressedFolder(KJV);
  const batch = await windows("calib.txt", 2);
  const tr = await CodebookTrainer.fromFolder(gpu, dir, { seqlen: T, trainNorms: true });
  const names = (await tr.trained()).keys().toArray();
  const grads = async () => {
    const out: Float32Array[] = [];
    for (const n of names) out.push(await tr.gradient(n));
    return out;
  };
  try {
    // Mask A: the first 10 positions of window 0 and the odd positions of window 1.
    const maskA = batch.map((_, i) => {
      const m = new Uint8Array(T);
      for (let t = 0; t < T; t++) m[t] = i === 0 ? +(t < 10) : t % 2;
      return m;
    });
    const nA = maskA.reduce((a, m) => a + m.reduce((x, y) => x + y, 0), 0);
    const nB = 2 * T - nA;
    const withMask = (masks: Uint8Array[]) => batch.map((w, i) => ({ ...w, mask: masks[i] }));
    const lossA = await tr.computeGradients(withMask(maskA));
    const gA = await grads();
    // A masked last target (window 0's position T - 1, not an input) does not matter:
    // bit-identical loss and gradients.
    const changed = withMask(maskA);
    changed[0].ids = changed[0].ids.slice();
    changed[0].ids[T] = (changed[0].ids[T] + 7) % 1024;
    assert.equal(await tr.computeGradients(changed), lossA);
    const gA2 = await grads();
    gA.forEach((g, i) => assert.deepEqual(gA2[i], g, `${names[i]} changed with a masked id`));
    // The masked loss is the mean NLL over the counted positions.
    const ev = await tr.evaluate(withMask(maskA));
    assert.equal(ev.tokens, nA);
    assert.ok(Math.abs(ev.nll - lossA) < 1e-5 * lossA, `evaluate ${ev.nll} vs loss ${lossA}`);
    // Complementary masks add up to the unmasked loss and gradients.
    const lossB = await tr.computeGradients(withMask(maskA.map((m) => m.map((v) => 1 - v))));
    const gB = await grads();
    const lossAll = await tr.computeGradients(batch);
    const gAll = await grads();
    assert.ok(Math.abs(lossA - lossB) > 1e-3, "the two halves should differ");
    assert.ok(Math.abs((nA * lossA + nB * lossB) / (2 * T) - lossAll) < 1e-5 * lossAll);
    gAll.forEach((g, i) => {
      const sum = g.map((_, j) => (nA * gA[i][j] + nB * gB[i][j]) / (2 * T));
      assertClose(sum, g, 1e-4 * maxAbs(g), 1e-3, names[i]);
    });
  } finally {
    tr.release();
  }
});

Deno.test("a one-hot teacher equals hard CE; state()/load() gives the same next step", async () => {
  const gpu = await getGpu();
  const dir = await compressedFolder(KJV);
  const batch = await windows("calib.txt", 2);
  const tr = await CodebookTrainer.fromFolder(gpu, dir, { seqlen: T, kdWeight: 1 });
  const names = (await tr.trained()).keys().toArray();
  try {
    const hard = await tr.computeGradients(batch);
    const gHard: Float32Array[] = [];
    for (const n of names) gHard.push(await tr.gradient(n));
    const k = 3;
    const taught = batch.map((w) => {
      const ids = new Int32Array(T * k), probs = new Float32Array(T * k);
      for (let t = 0; t < T; t++) {
        ids.set([(w.ids[t + 1] + 1) % 1024, w.ids[t + 1], (w.ids[t + 1] + 2) % 1024], t * k);
        probs.set([0, 0.6, 0], t * k);
      }
      return { ...w, teacher: { k, ids, probs } };
    });
    const soft = await tr.computeGradients(taught);
    assert.ok(Math.abs(soft - hard) < 1e-5 * hard, `soft ${soft} vs hard ${hard}`);
    for (let i = 0; i < names.length; i++) {
      const g = await tr.gradient(names[i]);
      assertClose(g, gHard[i], 1e-5 * maxAbs(gHard[i]), 1e-4, names[i]);
    }
    // A different teacher changes the loss (the teacher is used).
    const other = taught.map((w) => ({
      ...w,
      teacher: { ...w.teacher, probs: w.teacher.probs.map((_, j) => (j % k === 0 ? 0.5 : 0)) },
    }));
    assert.ok(Math.abs((await tr.computeGradients(other)) - hard) > 1e-3);

    // state()/load(): a step, save, another step; restore and redo it: identical bytes.
    await tr.step(batch, 1e-3);
    const saved = await tr.state();
    assert.equal(saved.step, 1);
    await tr.step(taught, 1e-3);
    const first = await tr.trained();
    await tr.step(batch, 1e-3);
    await tr.load(saved.tensors, saved.step);
    assert.equal(tr.steps, 1);
    await tr.step(taught, 1e-3);
    const again = await tr.trained();
    for (const n of names) assert.deepEqual(again.get(n), first.get(n), n);
  } finally {
    tr.release();
  }
});

/** Loss, every gradient, the codebooks after one step and the NLL of `batch` under `opts`. */
async function runOnce(batch: TrainWindow[], opts: Partial<CodebookTrainOptions>) {
  const gpu = await getGpu();
  const dir = await compressedFolder(KJV);
  const tr = await CodebookTrainer.fromFolder(gpu, dir, {
    seqlen: T,
    trainNorms: true,
    trainHead: true,
    kdWeight: 0.7,
    ...opts,
  });
  try {
    const loss = await tr.computeGradients(batch);
    const grads = new Map<string, Float32Array>();
    for (const n of (await tr.trained()).keys()) grads.set(n, await tr.gradient(n));
    const uploaded = tr.bytesUploaded;
    tr.applyUpdate(1e-3);
    const after = await tr.trained();
    const ev = await tr.evaluate(batch);
    return { loss, grads, after, ev, uploaded, indexOnHost: tr.indexOnHost };
  } finally {
    tr.release();
  }
}

Deno.test("layer-major passes and host-held indexes are byte-identical to one window at a time", async () => {
  const batch = await windows("calib.txt", 3);
  batch[1].mask = Uint8Array.from({ length: T }, (_, t) => (t % 3 ? 1 : 0));
  const k = 2;
  batch[2].teacher = {
    k,
    ids: Int32Array.from({ length: T * k }, (_, j) => (j * 37) % 1024),
    probs: Float32Array.from({ length: T * k }, (_, j) => (j % 2 ? 0.3 : 0.5)),
  };
  // The reference: resident indexes, one window per pass (the window-major order).
  const ref = await runOnce(batch, {});
  assert.equal(ref.uploaded, 0);
  assert.equal(ref.indexOnHost, false);
  const uploads: number[] = [];
  for (const opts of [{ indexOnHost: true, batch: 2 }, { indexOnHost: true, batch: 3 }]) {
    const got = await runOnce(batch, opts);
    const what = JSON.stringify(opts);
    assert.equal(got.indexOnHost, true);
    assert.equal(got.loss, ref.loss, `${what}: loss`);
    for (const [n, g] of ref.grads) assert.deepEqual(got.grads.get(n), g, `${what}: grad ${n}`);
    for (const [n, t] of ref.after) assert.deepEqual(got.after.get(n), t, `${what}: stepped ${n}`);
    assert.deepEqual(got.ev, ref.ev, `${what}: evaluate`);
    uploads.push(got.uploaded);
  }
  // Two passes upload every layer but the current one twice more than one pass does.
  assert.ok(uploads[1] > 0 && uploads[0] > uploads[1], `uploads ${uploads}`);
});

Deno.test("gpuBytes equals the GPU bytes the trainer holds", async () => {
  const gpu = await getGpu();
  const dir = await compressedFolder(KJV);
  const m = await openModel(dir);
  const shapes = {} as Record<LinearKind, ClusterModule>;
  for (const lin of linearNames(0, m.cfg)) {
    shapes[lin.kind] = m.quant!.modules[lin.name.replace(/\.weight$/, "")] as ClusterModule;
  }
  const max = gpu.limits.maxBinding;
  for (
    const opts of [
      {},
      { trainNorms: true, trainHead: true },
      { indexOnHost: true, batch: 3 },
      { trainNorms: true, trainHead: true, indexOnHost: true, batch: 2 },
    ]
  ) {
    const before = gpu.bytesLive;
    const tr = await CodebookTrainer.fromFolder(gpu, dir, { seqlen: T, ...opts });
    const held = gpu.bytesLive - before, host = tr.hostBytesHeld;
    tr.release();
    const want = CodebookTrainer.gpuBytes(m.cfg, shapes, T, max, opts);
    const wantHost = CodebookTrainer.hostBytes(m.cfg, shapes, max, opts);
    console.log(
      `gpuBytes ${want}, held ${held}; hostBytes ${wantHost}, held ${host} (${
        JSON.stringify(opts)
      })`,
    );
    assert.ok(Math.abs(want - held) <= 0.1 * held, `gpuBytes ${want} vs held ${held}`);
    assert.ok(Math.abs(wantHost - host) <= 0.1 * host, `hostBytes ${wantHost} vs held ${host}`);
    assert.equal(gpu.bytesLive, before, "release() frees everything");
  }
  // The offloaded index is most of the small model's GPU bytes: "auto" offloads below the
  // resident bytes and not at them.
  const resident = CodebookTrainer.gpuBytes(m.cfg, shapes, T, max);
  assert.ok(CodebookTrainer.gpuBytes(m.cfg, shapes, T, max, { indexOnHost: true }) < resident);
  for (const [gpuMemory, offload] of [[resident - 1, true], [resident, false]] as const) {
    const tr = await CodebookTrainer.fromFolder(gpu, dir, {
      seqlen: T,
      indexOnHost: "auto",
      gpuMemory,
    });
    tr.release();
    assert.equal(tr.indexOnHost, offload, `auto with ${gpuMemory} bytes`);
  }
});

Deno.test("Llama-2-70B codebook training (d 8, n 65536, seqlen 512) fits 48 GB with indexOnHost", async () => {
  const cfg = await loadConfigFile(
    fileURLToPath(new URL("../../fixtures/configs/llama-2-70b.json", import.meta.url)),
  );
  const shapes = { d: 8, n: 65536, splits: 1 }, max = 2 ** 31, T = 512;
  const resident = CodebookTrainer.gpuBytes(cfg, shapes, T, max);
  assert.ok(resident > 48e9, `resident ${resident}`);
  for (const batch of [1, 4, 8]) {
    const opts = { batch, indexOnHost: true };
    const bytes = CodebookTrainer.gpuBytes(cfg, shapes, T, max, opts);
    const host = CodebookTrainer.hostBytes(cfg, shapes, max, opts);
    const up = CodebookTrainer.uploadBytes(cfg, shapes, max, batch, opts);
    console.log(
      `70B batch ${batch}: GPU ${(bytes / 1e9).toFixed(2)} GB (resident ${
        (CodebookTrainer.gpuBytes(cfg, shapes, T, max, { batch }) / 1e9).toFixed(2)
      } GB), host ${(host / 1e9).toFixed(2)} GB, uploaded per step of ${batch} windows ` +
        `${(up / 1e9).toFixed(1)} GB`,
    );
    assert.ok(bytes <= 40e9, `batch ${batch}: ${bytes} bytes`);
  }
});
