// Whole-model codebook training on a compressed kjv-llama (tests/model/compressed_folder.ts):
// codebook and norm gradients against the dense Trainer's weight gradients reduced over the
// codes, the held-out NLL falls with training (and not with lr 0), masked positions contribute
// nothing, a one-hot teacher equals hard CE, state()/load() round-trips, and gpuBytes matches
// what the trainer allocates.
import assert from "node:assert/strict";
import { getGpu } from "../../src/gpu/device.ts";
import { type LinearKind, linearNames } from "../../src/io/config.ts";
import { Tokenizer } from "../../src/io/tokenizer.ts";
import { openModel } from "../../src/format/open.ts";
import type { ClusterModule } from "../../src/format/compressed.ts";
import { unpackCodes } from "../../src/io/pack.ts";
import { CodebookTrainer, type TrainWindow } from "../../src/train/codebook_trainer.ts";
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

Deno.test("gpuBytes equals the GPU bytes the trainer holds", async () => {
  const gpu = await getGpu();
  const dir = await compressedFolder(KJV);
  const m = await openModel(dir);
  const shapes = {} as Record<LinearKind, ClusterModule>;
  for (const lin of linearNames(0, m.cfg)) {
    shapes[lin.kind] = m.quant!.modules[lin.name.replace(/\.weight$/, "")] as ClusterModule;
  }
  for (const opts of [{}, { trainNorms: true, trainHead: true }]) {
    const before = gpu.bytesLive;
    const tr = await CodebookTrainer.fromFolder(gpu, dir, { seqlen: T, ...opts });
    const held = gpu.bytesLive - before;
    tr.release();
    const want = CodebookTrainer.gpuBytes(m.cfg, shapes, T, gpu.limits.maxBinding, opts);
    console.log(`gpuBytes ${want}, held ${held} (${JSON.stringify(opts)})`);
    assert.ok(Math.abs(want - held) <= 0.1 * held, `gpuBytes ${want} vs held ${held}`);
    assert.equal(gpu.bytesLive, before, "release() frees everything");
  }
});
