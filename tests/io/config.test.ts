import assert from "node:assert/strict";
import { join } from "node:path";
import { UserError } from "../../src/errors.ts";
import {
  checkTensors,
  expectedTensors,
  linearNames,
  loadConfig,
  type ModelConfig,
  parseConfig,
  ropeInvFreq,
} from "../../src/io/config.ts";
import { SafetensorsIndex, writeSafetensors } from "../../src/io/safetensors.ts";
import { HAS_SHARED, STORIES, TINYLLAMA } from "../shared.ts";

const BASE = {
  model_type: "llama",
  hidden_size: 64,
  intermediate_size: 172,
  num_hidden_layers: 2,
  num_attention_heads: 8,
  num_key_value_heads: 4,
  vocab_size: 32,
  max_position_embeddings: 128,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  hidden_act: "silu",
  tie_word_embeddings: true,
};

function refused(json: unknown, ...parts: string[]): void {
  assert.throws(() => parseConfig(json, "config.json"), (e: unknown) => {
    assert.ok(e instanceof UserError, `expected UserError, got ${e}`);
    assert.ok(e.message.startsWith("config.json: "), e.message);
    for (const p of parts) assert.ok(e.message.includes(p), `"${e.message}" lacks "${p}"`);
    return true;
  });
}

Deno.test({
  name: "both fixture configs parse",
  ignore: !HAS_SHARED,
  fn: async () => {
    const s = await loadConfig(STORIES);
    assert.deepEqual(s, {
      modelType: "llama",
      hidden: 64,
      intermediate: 172,
      layers: 5,
      heads: 8,
      kvHeads: 4,
      headDim: 8,
      vocab: 512,
      maxPositions: 512,
      ropeTheta: 10000,
      rmsNormEps: 1e-5,
      tieEmbeddings: true,
      bosId: 1,
      eosId: 2,
      torchDtype: "float32",
      ropeScaling: null,
      slidingWindow: null,
    });
    const t = await loadConfig(TINYLLAMA);
    assert.equal(t.hidden, 256);
    assert.equal(t.headDim, 32);
    assert.equal(t.vocab, 4096);
    assert.equal(t.tieEmbeddings, false);
    assert.equal(t.torchDtype, "bfloat16");
    assert.equal(t.eosId, 4095);
  },
});

Deno.test("head_dim and num_key_value_heads default from hidden size and heads", () => {
  const { num_key_value_heads: _, ...json } = BASE;
  const c = parseConfig(json, "config.json");
  assert.equal(c.kvHeads, 8);
  assert.equal(c.headDim, 8);
  assert.equal(c.bosId, undefined);
  assert.equal(parseConfig({ ...BASE, head_dim: 16 }, "config.json").headDim, 16);
});

Deno.test("mistral config keeps sliding_window and list eos ids", () => {
  const c = parseConfig(
    { ...BASE, model_type: "mistral", sliding_window: 4096, eos_token_id: [2, 3] },
    "config.json",
  );
  assert.equal(c.modelType, "mistral");
  assert.equal(c.slidingWindow, 4096);
  assert.deepEqual(c.eosId, [2, 3]);
  assert.equal(parseConfig({ ...BASE, sliding_window: 4096 }, "config.json").slidingWindow, null);
});

Deno.test("unknown model_type is refused naming the field", () => {
  refused(
    { ...BASE, model_type: "gpt2" },
    `unsupported model_type "gpt2" (supported: llama, mistral)`,
  );
  const { model_type: _, ...json } = BASE;
  refused(json, "model_type", "missing");
});

Deno.test("hidden_act other than silu is refused", () => {
  refused({ ...BASE, hidden_act: "gelu" }, "hidden_act", "gelu");
});

Deno.test("heads not divisible by kv heads is refused", () => {
  refused({ ...BASE, num_key_value_heads: 3 }, "num_key_value_heads", "8", "3");
});

Deno.test("missing required field is refused naming the field", () => {
  for (const field of ["hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"]) {
    const json: Record<string, unknown> = { ...BASE };
    delete json[field];
    refused(json, `missing required field "${field}"`);
  }
});

Deno.test("wrong field types are refused naming the field", () => {
  refused({ ...BASE, hidden_size: "64" }, `"hidden_size"`);
  refused({ ...BASE, rms_norm_eps: -1 }, `"rms_norm_eps"`);
  refused({ ...BASE, num_hidden_layers: 2.5 }, `"num_hidden_layers"`);
  refused({ ...BASE, tie_word_embeddings: "yes" }, `"tie_word_embeddings"`);
  refused([], "not a JSON object");
});

Deno.test("attention and mlp biases are refused", () => {
  refused({ ...BASE, attention_bias: true }, "attention_bias");
  refused({ ...BASE, mlp_bias: true }, "mlp_bias");
  assert.equal(parseConfig({ ...BASE, attention_bias: false }, "config.json").hidden, 64);
});

Deno.test("hidden size not divisible by heads without head_dim is refused", () => {
  refused({ ...BASE, hidden_size: 60 }, "hidden_size", "head_dim");
});

Deno.test("unsupported rope_scaling types are refused, default means none", () => {
  refused({ ...BASE, rope_scaling: { type: "yarn", factor: 2 } }, "rope_scaling", "yarn");
  refused({ ...BASE, rope_scaling: { rope_type: "llama3", factor: 8 } }, "low_freq_factor");
  const c = parseConfig({ ...BASE, rope_scaling: { rope_type: "default" } }, "config.json");
  assert.equal(c.ropeScaling, null);
});

Deno.test("missing config.json is refused naming the path", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assert.rejects(() => loadConfig(dir), (e: unknown) => {
      assert.ok(e instanceof UserError);
      assert.ok(e.message.includes(join(dir, "config.json")), e.message);
      return true;
    });
    Deno.writeTextFileSync(join(dir, "config.json"), "{oops");
    await assert.rejects(() => loadConfig(dir), (e: unknown) => {
      assert.ok(e instanceof UserError && e.message.includes("config.json"));
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

function cfgWith(json: Record<string, unknown>): ModelConfig {
  return parseConfig({ ...BASE, ...json }, "config.json");
}

Deno.test("ropeInvFreq without scaling is theta^(-2i/headDim)", () => {
  const inv = ropeInvFreq(cfgWith({ head_dim: 8 }));
  assert.deepEqual(Array.from(inv), Array.from({ length: 4 }, (_, i) => 1 / 10000 ** (i / 4)));
  assert.ok(Math.abs(inv[1] - 0.1) < 1e-15);
  const lin = ropeInvFreq(cfgWith({ head_dim: 8, rope_scaling: { type: "linear", factor: 4 } }));
  assert.deepEqual(Array.from(lin), Array.from(inv, (v) => v / 4));
});

Deno.test("ropeInvFreq applies llama3 scaling like transformers", () => {
  const close = (got: Float64Array, want: number[]) => {
    assert.equal(got.length, want.length);
    want.forEach((w, i) =>
      assert.ok(Math.abs(got[i] - w) <= 1e-14 * w, `[${i}] ${got[i]} != ${w}`)
    );
  };
  const scaling = {
    rope_type: "llama3",
    factor: 8,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position_embeddings: 8192,
  };
  // Wavelengths 2*pi*[1, 10, 100, 1000]: high-frequency ones kept, 6283 is in the smooth band.
  close(ropeInvFreq(cfgWith({ head_dim: 8, rope_scaling: scaling })), [
    1,
    0.1,
    0.01,
    0.00021360754402756864,
  ]);
  // With a 1024 context: 628 is smooth, 6283 is past the low-frequency wavelength (divided by 8).
  close(
    ropeInvFreq(
      cfgWith({
        head_dim: 8,
        rope_scaling: { ...scaling, original_max_position_embeddings: 1024 },
      }),
    ),
    [1, 0.1, 0.003086760967011274, 0.000125],
  );
});

Deno.test("linearNames lists q,k,v,o,gate,up,down with HF names and [out, in]", () => {
  const cfg = cfgWith({ head_dim: 16 });
  const l = linearNames(3, cfg);
  assert.deepEqual(l.map((x) => x.kind), ["q", "k", "v", "o", "gate", "up", "down"]);
  assert.equal(l[0].name, "model.layers.3.self_attn.q_proj.weight");
  assert.equal(l[6].name, "model.layers.3.mlp.down_proj.weight");
  assert.deepEqual(l.map((x) => [x.out, x.in]), [
    [128, 64],
    [64, 64],
    [64, 64],
    [64, 128],
    [172, 64],
    [172, 64],
    [64, 172],
  ]);
});

Deno.test("checkTensors names a missing or misshapen tensor", async () => {
  const cfg = cfgWith({ num_hidden_layers: 1, tie_word_embeddings: false });
  const dir = await Deno.makeTempDir();
  try {
    const tensors = expectedTensors(cfg).map(({ name, shape }) => ({
      name,
      dtype: "BF16" as const,
      shape,
      data: new Uint8Array(shape.reduce((a, b) => a * b, 1) * 2),
    }));
    const file = join(dir, "model.safetensors");
    await writeSafetensors(file, tensors);
    let idx = await SafetensorsIndex.open(dir);
    checkTensors(cfg, idx);
    idx.close();

    await writeSafetensors(file, tensors.filter((t) => t.name !== "lm_head.weight"));
    idx = await SafetensorsIndex.open(dir);
    assert.throws(() => checkTensors(cfg, idx), /tensor "lm_head.weight" is missing/);
    checkTensors({ ...cfg, tieEmbeddings: true }, idx);
    idx.close();

    const bad = tensors.map((t) =>
      t.name.endsWith("k_proj.weight") ? { ...t, shape: [t.shape[1], t.shape[0]] } : t
    );
    await writeSafetensors(file, bad);
    idx = await SafetensorsIndex.open(dir);
    assert.throws(
      () => checkTensors(cfg, idx),
      (e: unknown) =>
        e instanceof UserError &&
        e.message.includes(`"model.layers.0.self_attn.k_proj.weight" has shape [64,32]`) &&
        e.message.includes("[32,64]"),
    );
    idx.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
