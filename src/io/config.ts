// HF config.json for Llama-family models (llama, mistral), validated with zod.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import { UserError } from "../errors.ts";
import type { SafetensorsIndex } from "./safetensors.ts";
import type { FileSource } from "./source.ts";

export type RopeScaling =
  | null
  | { type: "linear"; factor: number }
  | {
    type: "llama3";
    factor: number;
    lowFreqFactor: number;
    highFreqFactor: number;
    originalMaxPositions: number;
  };

export interface ModelConfig {
  modelType: "llama" | "mistral";
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  maxPositions: number;
  ropeTheta: number;
  rmsNormEps: number;
  tieEmbeddings: boolean;
  bosId?: number;
  eosId?: number | number[];
  torchDtype?: string;
  ropeScaling: RopeScaling;
  slidingWindow: number | null;
}

const SUPPORTED = ["llama", "mistral"] as const;

const posInt = z.number().int().positive();
const posNum = z.number().positive();
const tokenId = z.number().int().nonnegative();

const schema = z.object({
  model_type: z.enum(SUPPORTED),
  hidden_size: posInt,
  intermediate_size: posInt,
  num_hidden_layers: posInt,
  num_attention_heads: posInt,
  num_key_value_heads: posInt.nullish(),
  head_dim: posInt.nullish(),
  vocab_size: posInt,
  max_position_embeddings: posInt.optional(),
  rope_theta: posNum.optional(),
  rms_norm_eps: posNum.optional(),
  hidden_act: z.string().optional(),
  attention_bias: z.boolean().optional(),
  mlp_bias: z.boolean().optional(),
  tie_word_embeddings: z.boolean().optional(),
  bos_token_id: tokenId.nullish(),
  eos_token_id: z.union([tokenId, z.array(tokenId)]).nullish(),
  torch_dtype: z.string().nullish(),
  sliding_window: posInt.nullish(),
  rope_scaling: z.object({
    type: z.string().optional(),
    rope_type: z.string().optional(),
    factor: posNum.optional(),
    low_freq_factor: posNum.optional(),
    high_freq_factor: posNum.optional(),
    original_max_position_embeddings: posInt.optional(),
  }).nullish(),
});

function describe(issue: z.ZodIssue): string {
  const field = issue.path.join(".");
  if (issue.code === "invalid_type" && issue.received === "undefined") {
    return `missing required field "${field}"`;
  }
  return `field "${field}": ${issue.message}`;
}

/** Validates a parsed config.json; `file` names it in errors. */
export function parseConfig(json: unknown, file: string): ModelConfig {
  const fail = (problem: string): never => {
    throw new UserError(`${file}: ${problem}`);
  };
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    return fail("not a JSON object");
  }
  const mt = (json as Record<string, unknown>).model_type;
  if (mt === undefined) fail(`missing required field "model_type"`);
  if (!SUPPORTED.includes(mt as typeof SUPPORTED[number])) {
    fail(`unsupported model_type ${JSON.stringify(mt)} (supported: ${SUPPORTED.join(", ")})`);
  }
  const r = schema.safeParse(json);
  if (!r.success) return fail(describe(r.error.issues[0]));
  const c = r.data;

  const act = c.hidden_act ?? "silu";
  if (act !== "silu") fail(`field "hidden_act": "${act}" is not supported (only "silu")`);
  if (c.attention_bias) fail(`field "attention_bias": biases are not supported`);
  if (c.mlp_bias) fail(`field "mlp_bias": biases are not supported`);

  const heads = c.num_attention_heads;
  const kvHeads = c.num_key_value_heads ?? heads;
  if (heads % kvHeads !== 0) {
    fail(
      `field "num_key_value_heads": num_attention_heads ${heads} is not divisible by num_key_value_heads ${kvHeads}`,
    );
  }
  let headDim = c.head_dim;
  if (headDim == null) {
    if (c.hidden_size % heads !== 0) {
      fail(
        `field "num_attention_heads": hidden_size ${c.hidden_size} is not divisible by ${heads} and head_dim is not given`,
      );
    }
    headDim = c.hidden_size / heads;
  }
  if (headDim % 2 !== 0) fail(`field "head_dim": ${headDim} is odd; RoPE needs an even head_dim`);

  return {
    modelType: c.model_type,
    hidden: c.hidden_size,
    intermediate: c.intermediate_size,
    layers: c.num_hidden_layers,
    heads,
    kvHeads,
    headDim,
    vocab: c.vocab_size,
    // Defaults are transformers' LlamaConfig / MistralConfig defaults.
    maxPositions: c.max_position_embeddings ?? (c.model_type === "mistral" ? 131072 : 2048),
    ropeTheta: c.rope_theta ?? 10000,
    rmsNormEps: c.rms_norm_eps ?? 1e-6,
    tieEmbeddings: c.tie_word_embeddings ?? false,
    ...(c.bos_token_id != null ? { bosId: c.bos_token_id } : {}),
    ...(c.eos_token_id != null ? { eosId: c.eos_token_id } : {}),
    ...(c.torch_dtype != null ? { torchDtype: c.torch_dtype } : {}),
    ropeScaling: parseRopeScaling(c.rope_scaling ?? null, fail),
    slidingWindow: c.model_type === "mistral" ? c.sliding_window ?? null : null,
  };
}

function parseRopeScaling(
  rs: z.infer<typeof schema>["rope_scaling"],
  fail: (problem: string) => never,
): RopeScaling {
  if (rs == null) return null;
  const type = rs.rope_type ?? rs.type;
  if (type === undefined || type === "default") return null;
  const need = <T>(v: T | undefined, key: string): T =>
    v === undefined ? fail(`missing required field "rope_scaling.${key}"`) : v;
  if (type === "linear") return { type, factor: need(rs.factor, "factor") };
  if (type === "llama3") {
    const out = {
      type,
      factor: need(rs.factor, "factor"),
      lowFreqFactor: need(rs.low_freq_factor, "low_freq_factor"),
      highFreqFactor: need(rs.high_freq_factor, "high_freq_factor"),
      originalMaxPositions: need(
        rs.original_max_position_embeddings,
        "original_max_position_embeddings",
      ),
    } as const;
    if (out.highFreqFactor <= out.lowFreqFactor) {
      fail(`field "rope_scaling.high_freq_factor": must exceed low_freq_factor`);
    }
    return out;
  }
  return fail(
    `field "rope_scaling": unsupported type ${JSON.stringify(type)} (supported: linear, llama3)`,
  );
}

/** Reads and validates `<dir>/config.json` (a folder path, or any FileSource). */
export async function loadConfig(dir: string | FileSource): Promise<ModelConfig> {
  if (typeof dir === "string") return loadConfigFile(join(dir, "config.json"));
  const file = dir.path("config.json");
  const text = await dir.text("config.json");
  if (text === null) throw new UserError(`Cannot read ${file}: no such file`);
  return parseConfigText(text, file);
}

/** A config.json given by its own path. */
export async function loadConfigFile(file: string): Promise<ModelConfig> {
  if (!existsSync(file)) throw new UserError(`Cannot read ${file}: no such file`);
  return parseConfigText(await Deno.readTextFile(file), file);
}

function parseConfigText(text: string, file: string): ModelConfig {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new UserError(`${file}: not valid JSON (${(e as Error).message.split("\n")[0]})`);
  }
  return parseConfig(json, file);
}

/** RoPE inverse frequencies, length headDim/2, with HF rope_scaling applied. */
export function ropeInvFreq(cfg: ModelConfig): Float64Array {
  const half = cfg.headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / cfg.ropeTheta ** ((2 * i) / cfg.headDim);
  const rs = cfg.ropeScaling;
  if (rs?.type === "linear") {
    for (let i = 0; i < half; i++) inv[i] /= rs.factor;
  } else if (rs?.type === "llama3") {
    // transformers' _compute_llama3_parameters
    const oldLen = rs.originalMaxPositions;
    const lowWavelen = oldLen / rs.lowFreqFactor;
    const highWavelen = oldLen / rs.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const f = inv[i];
      const wavelen = (2 * Math.PI) / f;
      if (wavelen < highWavelen) continue;
      if (wavelen > lowWavelen) {
        inv[i] = f / rs.factor;
      } else {
        const smooth = (oldLen / wavelen - rs.lowFreqFactor) /
          (rs.highFreqFactor - rs.lowFreqFactor);
        inv[i] = ((1 - smooth) * f) / rs.factor + smooth * f;
      }
    }
  }
  return inv;
}

export const LINEAR_KINDS = ["q", "k", "v", "o", "gate", "up", "down"] as const;
export type LinearKind = typeof LINEAR_KINDS[number];

export interface LinearName {
  kind: LinearKind;
  /** HF tensor name, e.g. model.layers.0.self_attn.q_proj.weight */
  name: string;
  /** Rows of the [out, in] weight. */
  out: number;
  in: number;
}

/** The 7 linears of a layer in order q, k, v, o, gate, up, down, with [out, in] from cfg. */
export function linearNames(layer: number, cfg: ModelConfig): LinearName[] {
  const p = `model.layers.${layer}`;
  const q = cfg.heads * cfg.headDim;
  const kv = cfg.kvHeads * cfg.headDim;
  const h = cfg.hidden, ff = cfg.intermediate;
  return [
    { kind: "q", name: `${p}.self_attn.q_proj.weight`, out: q, in: h },
    { kind: "k", name: `${p}.self_attn.k_proj.weight`, out: kv, in: h },
    { kind: "v", name: `${p}.self_attn.v_proj.weight`, out: kv, in: h },
    { kind: "o", name: `${p}.self_attn.o_proj.weight`, out: h, in: q },
    { kind: "gate", name: `${p}.mlp.gate_proj.weight`, out: ff, in: h },
    { kind: "up", name: `${p}.mlp.up_proj.weight`, out: ff, in: h },
    { kind: "down", name: `${p}.mlp.down_proj.weight`, out: h, in: ff },
  ];
}

/** Every tensor a dense Llama model needs, with its expected shape. */
export function expectedTensors(cfg: ModelConfig): { name: string; shape: number[] }[] {
  const out = [{ name: "model.embed_tokens.weight", shape: [cfg.vocab, cfg.hidden] }];
  for (let l = 0; l < cfg.layers; l++) {
    out.push({ name: `model.layers.${l}.input_layernorm.weight`, shape: [cfg.hidden] });
    out.push({ name: `model.layers.${l}.post_attention_layernorm.weight`, shape: [cfg.hidden] });
    for (const lin of linearNames(l, cfg)) out.push({ name: lin.name, shape: [lin.out, lin.in] });
  }
  out.push({ name: "model.norm.weight", shape: [cfg.hidden] });
  if (!cfg.tieEmbeddings) out.push({ name: "lm_head.weight", shape: [cfg.vocab, cfg.hidden] });
  return out;
}

/** Throws a UserError naming the first missing, misshapen or non-float tensor. */
export function checkTensors(
  cfg: ModelConfig,
  index: Pick<SafetensorsIndex, "dir" | "has" | "info">,
): void {
  for (const { name, shape } of expectedTensors(cfg)) {
    if (!index.has(name)) throw new UserError(`${index.dir}: tensor "${name}" is missing`);
    const t = index.info(name);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new UserError(
        `${t.file}: tensor "${name}" has shape [${t.shape}], config expects [${shape}]`,
      );
    }
    if (t.dtype !== "F32" && t.dtype !== "F16" && t.dtype !== "BF16") {
      throw new UserError(`${t.file}: tensor "${name}" has dtype ${t.dtype}, not a float`);
    }
  }
}
