// The compressed model folder: a Hugging Face folder whose config.json carries a
// quantization_config, with `<module>.codebook` / `<module>.codes` (ClusComp) or
// `<module>.qweight` / `.scales` / `.zeros` (RTN and GPTQ) beside the untouched tensors.
//
// ClusComp codes are written packed (codes_dtype "packed"): `<module>.codes` is a 1-D U8 tensor
// of packedBytes(in * ceil(out / d), code_bits) bytes, the little-endian LSB-first bit stream of
// src/io/pack.ts (quantization_config.codes_packing = "lsb-u8"). Folders written before
// packing hold U8 / U16 codes [in, ceil(out / d)] (codes_dtype "U8" / "U16"); both load.
import { existsSync } from "node:fs";
import { z } from "zod";
import { dirname, join } from "node:path";
import { decodeT } from "../cluster/vectorize.ts";
import { rtnDequantize } from "../cluster/rtn.ts";
import { UserError } from "../errors.ts";
import { type LinearKind, type LinearName, linearNames, type ModelConfig } from "../io/config.ts";
import { besideName, replaceFolder } from "../io/atomic.ts";
import { asSource, type FileSource } from "../io/source.ts";
import { type Dtype, SafetensorsIndex, writeSafetensors } from "../io/safetensors.ts";
import type { CodebookData, WeightSource } from "../model/weights.ts";
import { transpose } from "../util/matrix.ts";
import {
  bytesToWords,
  codeBits,
  firstCodeAtLeast,
  packCodes,
  packedBytes,
  unpackCodes,
  wordsToBytes,
} from "../io/pack.ts";

/** quantization_config.codes_packing of folders with packed codes (see src/io/pack.ts). */
export const CODES_PACKING = "lsb-u8";

export interface ClusterModule {
  d: number;
  n: number;
  /** Zero columns appended to each W^T row so that d divides it: ceil(out / d) * d - out. */
  pad: number;
  splits: number;
  codebook_dtype: "f16" | "bf16";
  /**
   * "packed": `<module>.codes` is the 1-D U8 bit stream of code_bits-bit codes. "U8" / "U16"
   * (folders written before packing): one code per element, shape [in, ceil(out / d)].
   */
  codes_dtype: "packed" | "U8" | "U16";
  /** Bits per code, codeBits(n) = max(1, ceil(log2 n)); present when codes_dtype is "packed". */
  code_bits?: number;
}

export interface RtnModule {
  bits: number;
  group: number;
  /** GPTQ folders (quant_method "gptq", same tensors as RTN): how the codes were found. */
  act_order?: boolean;
  damp?: number;
}

export interface QuantizationConfig {
  quant_method: "cluscomp" | "rtn" | "gptq";
  bits_per_weight: number;
  stored_bits_per_weight: number;
  /** How packed codes are laid out: "lsb-u8" (CODES_PACKING). Absent in older folders. */
  codes_packing?: typeof CODES_PACKING;
  modules: Record<string, ClusterModule | RtnModule>;
}

export interface TensorBytes {
  name: string;
  dtype: Dtype;
  shape: number[];
  data: Uint8Array;
}

const posInt = z.number().int().positive();
const clusterModule = z.object({
  d: posInt,
  n: posInt.max(65536),
  pad: z.number().int().nonnegative(),
  splits: posInt,
  codebook_dtype: z.enum(["f16", "bf16"]),
  codes_dtype: z.enum(["packed", "U8", "U16"]),
  code_bits: posInt.max(16).optional(),
}).passthrough();
const rtnModule = z.object({ bits: posInt.max(16), group: posInt }).passthrough();
const quantConfig = z.object({
  quant_method: z.enum(["cluscomp", "rtn", "gptq"]),
  bits_per_weight: z.number().nonnegative(),
  stored_bits_per_weight: z.number().nonnegative(),
  codes_packing: z.literal(CODES_PACKING).optional(),
  modules: z.record(z.unknown()),
}).passthrough();

/** The quantization_config of a folder's config.json (validated), or null for a dense model. */
export async function readQuantConfig(
  dir: string | FileSource,
): Promise<QuantizationConfig | null> {
  const src = asSource(dir);
  const path = src.path("config.json");
  const text = await src.text("config.json");
  if (text === null) return null;
  let raw: { quantization_config?: unknown };
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new UserError(`${path}: not valid JSON (${(e as Error).message.split("\n")[0]})`);
  }
  const qc = raw?.quantization_config;
  if (qc === undefined || qc === null) return null;
  const top = quantConfig.safeParse(qc);
  if (!top.success) throw new UserError(`${path}: ${zodIssue("quantization_config", top.error)}`);
  const method = top.data.quant_method;
  const schema = method === "cluscomp" ? clusterModule : rtnModule;
  for (const [name, m] of Object.entries(top.data.modules)) {
    const r = schema.safeParse(m);
    if (!r.success) {
      throw new UserError(
        `${path}: ${zodIssue(`quantization_config.modules["${name}"]`, r.error)}`,
      );
    }
  }
  return top.data as unknown as QuantizationConfig;
}

/** One line for the first zod issue: the field's path and what is wrong. */
function zodIssue(root: string, err: z.ZodError): string {
  const i = err.issues[0];
  const field = i.path.reduce<string>(
    (a, k) => typeof k === "number" ? `${a}[${k}]` : `${a}.${k}`,
    root,
  );
  return `${field}: ${i.message}`;
}

/** Module name (no .weight suffix) of a linear. */
export function moduleName(cfg: ModelConfig, layer: number, kind: LinearKind): string {
  return linearNames(layer, cfg).find((l) => l.kind === kind)!.name.replace(/\.weight$/, "");
}

/** How one ClusComp module's codes tensor must look: dtype, shape, bits and code count. */
interface CodesSpec {
  dtype: Dtype;
  shape: number[];
  bits: number;
  /** Codes: in * cols. */
  count: number;
  cols: number;
}

/** Checks a ClusComp module's settings against its linear; the expected codes tensor. */
function codesSpec(dir: string, name: string, c: ClusterModule, lin: LinearName): CodesSpec {
  const where = `${join(dir, "config.json")}: quantization_config.modules["${name}"]`;
  const tensor = `tensor "${name}.codes"`;
  for (const k of ["d", "n", "splits"] as const) {
    if (!Number.isSafeInteger(c[k]) || c[k] < 1) {
      throw new UserError(`${where}.${k} must be a positive integer (got ${c[k]}) for ${tensor}`);
    }
  }
  if (c.n > 65536) {
    throw new UserError(`${where}.n = ${c.n} exceeds 65536 (codes are at most 16 bits)`);
  }
  if (lin.in % c.splits !== 0) {
    throw new UserError(`${where}.splits = ${c.splits} does not divide the ${lin.in} input rows`);
  }
  const cols = Math.ceil(lin.out / c.d), count = lin.in * cols, bits = codeBits(c.n);
  switch (c.codes_dtype) {
    case "packed":
      if (c.code_bits !== bits) {
        throw new UserError(
          `${where}.code_bits is ${c.code_bits} but n = ${c.n} needs ${bits} bits per code (${tensor})`,
        );
      }
      return { dtype: "U8", shape: [packedBytes(count, bits)], bits, count, cols };
    case "U8":
    case "U16":
      return { dtype: c.codes_dtype, shape: [lin.in, cols], bits, count, cols };
    default:
      throw new UserError(
        `${where}.codes_dtype ${
          JSON.stringify(c.codes_dtype)
        } is unknown for ${tensor} (supported: packed, U8, U16)`,
      );
  }
}

/** Throws unless the tensor exists with this shape (and dtype, when given). */
function expectTensor(
  index: SafetensorsIndex,
  name: string,
  shape: number[],
  dtype?: Dtype,
  what = "",
): void {
  if (!index.has(name)) throw new UserError(`${index.dir}: tensor "${name}" is missing`);
  const t = index.info(name);
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new UserError(
      `${t.file}: tensor "${name}" has shape [${t.shape}], expected [${shape}]${what}`,
    );
  }
  if (dtype && t.dtype !== dtype) {
    throw new UserError(`${t.file}: tensor "${name}" has dtype ${t.dtype}, expected ${dtype}`);
  }
}

/** Checks a ClusComp module's two tensors; the codes' spec. */
function checkClusterTensors(
  index: SafetensorsIndex,
  name: string,
  c: ClusterModule,
  lin: LinearName,
): CodesSpec {
  const spec = codesSpec(index.dir, name, c, lin);
  expectTensor(index, `${name}.codebook`, c.splits === 1 ? [c.n, c.d] : [c.splits, c.n, c.d]);
  const cb = index.info(`${name}.codebook`);
  if (cb.dtype !== "F16" && cb.dtype !== "BF16" && cb.dtype !== "F32") {
    throw new UserError(`${cb.file}: tensor "${cb.name}" has dtype ${cb.dtype}, not a float`);
  }
  const what = c.codes_dtype === "packed"
    ? ` (${spec.count} codes packed at ${spec.bits} bits)`
    : "";
  expectTensor(index, `${name}.codes`, spec.shape, spec.dtype, what);
  return spec;
}

/** Decodes compressed linears on the fly; everything else is read as stored. */
export class CompressedSource implements WeightSource {
  constructor(
    readonly cfg: ModelConfig,
    readonly index: SafetensorsIndex,
    readonly qc: QuantizationConfig,
  ) {}

  async linearT(layer: number, kind: LinearKind): Promise<Float32Array> {
    const lin = linearNames(layer, this.cfg).find((l) => l.kind === kind)!;
    const name = lin.name.replace(/\.weight$/, "");
    const m = this.qc.modules[name];
    if (!m) return transpose(await this.index.readF32(lin.name), lin.out, lin.in);
    if (this.qc.quant_method === "rtn" || this.qc.quant_method === "gptq") {
      const r = m as RtnModule;
      const q = await this.index.readRaw(`${name}.qweight`);
      const scales = await this.index.readF32(`${name}.scales`);
      const zeros = await this.index.readRaw(`${name}.zeros`);
      const w = rtnDequantize({ q, scales, zeros }, lin.out, lin.in, r.group);
      return transpose(w, lin.out, lin.in);
    }
    const c = (await this.codebook(layer, kind))!;
    const cols = Math.ceil(lin.out / c.d);
    const codes = unpackCodes(c.codes, lin.in * cols, c.bits);
    const rowsPer = lin.in / c.splits;
    const out = new Float32Array(lin.in * lin.out);
    for (let s = 0; s < c.splits; s++) {
      const centroids = c.centroids.subarray(s * c.n * c.d, (s + 1) * c.n * c.d);
      const part = codes.subarray(s * rowsPer * cols, (s + 1) * rowsPer * cols);
      out.set(decodeT(centroids, part, rowsPer, lin.out, c.d), s * rowsPer * lin.out);
    }
    return out;
  }

  /**
   * A ClusComp linear as codebooks and packed codes (old U8 / U16 folders are packed on load),
   * validated: tensor shapes and dtypes, code_bits, every code < n. Null for RTN and dense ones.
   */
  async codebook(layer: number, kind: LinearKind): Promise<CodebookData | null> {
    if (this.qc.quant_method !== "cluscomp") return null;
    const lin = linearNames(layer, this.cfg).find((l) => l.kind === kind)!;
    const name = lin.name.replace(/\.weight$/, "");
    const c = this.qc.modules[name] as ClusterModule | undefined;
    if (!c) return null;
    const spec = checkClusterTensors(this.index, name, c, lin);
    const codesName = `${name}.codes`;
    const file = this.index.info(codesName).file;
    const centroids = await this.index.readF32(`${name}.codebook`);
    const raw = await this.index.readRaw(codesName);
    const tooBig = (code: number, at: number) =>
      new UserError(
        `${file}: tensor "${codesName}" holds code ${code} at index ${at} >= n = ${c.n}`,
      );
    let words: Uint32Array;
    if (c.codes_dtype === "packed") {
      words = bytesToWords(raw, spec.count, spec.bits);
      const bad = firstCodeAtLeast(words, spec.count, spec.bits, c.n);
      if (bad >= 0) throw tooBig(unpackCodes(words, bad + 1, spec.bits)[bad], bad);
    } else {
      const codes = c.codes_dtype === "U8" ? raw : u16View(raw);
      for (let i = 0; i < codes.length; i++) if (codes[i] >= c.n) throw tooBig(codes[i], i);
      words = packCodes(codes, spec.bits);
    }
    return {
      in: lin.in,
      out: lin.out,
      d: c.d,
      n: c.n,
      splits: c.splits,
      bits: spec.bits,
      centroids,
      codes: words,
    };
  }

  tensor(name: string): Promise<Float32Array> {
    return this.index.readF32(name);
  }

  async lmHeadT(): Promise<Float32Array> {
    const name = this.cfg.tieEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    return transpose(await this.index.readF32(name), this.cfg.vocab, this.cfg.hidden);
  }
}

/** Little-endian u16 values of bytes (copied when the bytes are not 2-aligned). */
function u16View(b: Uint8Array): Uint16Array {
  const a = b.byteOffset % 2 === 0 ? b : b.slice();
  return new Uint16Array(a.buffer, a.byteOffset, a.byteLength >> 1);
}

/**
 * A work unit's codes tensor (U8 / U16 [in, cols], one code per element) as the exported
 * packed stream: a 1-D U8 tensor of packedBytes(in * cols, codeBits(n)) bytes.
 */
export function packedCodesTensor(t: TensorBytes, n: number): TensorBytes {
  if (t.dtype !== "U8" && t.dtype !== "U16") {
    throw new Error(`packedCodesTensor: ${t.name} has dtype ${t.dtype}, not U8 or U16`);
  }
  const codes = t.dtype === "U8" ? t.data : u16View(t.data);
  const bits = codeBits(n);
  for (let i = 0; i < codes.length; i++) {
    if (codes[i] >= n) throw new Error(`packedCodesTensor: ${t.name} code ${codes[i]} >= n = ${n}`);
  }
  const data = wordsToBytes(packCodes(codes, bits), codes.length, bits);
  return { name: t.name, dtype: "U8", shape: [data.length], data };
}

const COPIED = [
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "generation_config.json",
];

/** Optional changes to what writeCompressedModel copies from the source folder. */
export interface WriteOptions {
  /** Applied to every tensor copied as stored (embedding, norms, lm_head). */
  copied?: (t: TensorBytes) => TensorBytes;
  /** Keys set in the written config.json (e.g. torch_dtype). */
  config?: Record<string, unknown>;
}

/**
 * Writes a model folder (compressed when `qc` is given, dense otherwise) atomically: everything
 * goes to a temporary folder beside `outDir`, which replaceFolder moves into place at the end
 * (an existing `outDir` stays whole until the new one is complete). Shard 1 holds the non-block
 * tensors, shard i + 2 block i.
 */
export async function writeCompressedModel(
  srcDir: string,
  outDir: string,
  cfg: ModelConfig,
  qc: QuantizationConfig | null,
  blockTensors: (layer: number) => Promise<TensorBytes[]>,
  index: SafetensorsIndex,
  beforeRename?: (tmpDir: string) => Promise<void>,
  opts: WriteOptions = {},
): Promise<void> {
  await Deno.mkdir(dirname(outDir), { recursive: true });
  const tmp = besideName(outDir, "tmp");
  await Deno.mkdir(tmp);
  try {
    await writeModelFiles(tmp, srcDir, cfg, qc, blockTensors, index, opts);
    await beforeRename?.(tmp);
    await replaceFolder(tmp, outDir);
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
}

/** The folder's files, written into `tmp` (writeCompressedModel's body). */
async function writeModelFiles(
  tmp: string,
  srcDir: string,
  cfg: ModelConfig,
  qc: QuantizationConfig | null,
  blockTensors: (layer: number) => Promise<TensorBytes[]>,
  index: SafetensorsIndex,
  opts: WriteOptions,
): Promise<void> {
  const config = JSON.parse(await Deno.readTextFile(join(srcDir, "config.json")));
  if (qc) config.quantization_config = qc;
  else delete config.quantization_config;
  Object.assign(config, opts.config ?? {});
  await Deno.writeTextFile(join(tmp, "config.json"), JSON.stringify(config, null, 2) + "\n");
  for (const f of COPIED) {
    if (existsSync(join(srcDir, f))) await Deno.copyFile(join(srcDir, f), join(tmp, f));
  }
  const shards = cfg.layers + 1;
  const shardName = (i: number) =>
    `model-${String(i + 1).padStart(5, "0")}-of-${String(shards).padStart(5, "0")}.safetensors`;
  const weightMap: Record<string, string> = {};
  const raw = async (name: string): Promise<TensorBytes> => {
    const info = index.info(name);
    const t = { name, dtype: info.dtype, shape: info.shape, data: await index.readRaw(name) };
    return opts.copied ? opts.copied(t) : t;
  };
  const top = [await raw("model.embed_tokens.weight"), await raw("model.norm.weight")];
  if (!cfg.tieEmbeddings) top.push(await raw("lm_head.weight"));
  await writeShard(join(tmp, shardName(0)), top, weightMap, shardName(0));
  for (let l = 0; l < cfg.layers; l++) {
    const p = `model.layers.${l}`;
    const tensors = [
      await raw(`${p}.input_layernorm.weight`),
      await raw(`${p}.post_attention_layernorm.weight`),
      ...await blockTensors(l),
    ];
    await writeShard(join(tmp, shardName(l + 1)), tensors, weightMap, shardName(l + 1));
  }
  const sorted = Object.fromEntries(Object.entries(weightMap).sort(([a], [b]) => a < b ? -1 : 1));
  await Deno.writeTextFile(
    join(tmp, "model.safetensors.index.json"),
    JSON.stringify({ metadata: { format: "pt" }, weight_map: sorted }, null, 2) + "\n",
  );
}

async function writeShard(
  path: string,
  tensors: TensorBytes[],
  weightMap: Record<string, string>,
  file: string,
): Promise<void> {
  for (const t of tensors) weightMap[t.name] = file;
  await writeSafetensors(path, tensors, { format: "pt" });
}

/** Like checkTensors, for a compressed folder: each compressed linear's parts must be present. */
export function checkCompressedTensors(
  cfg: ModelConfig,
  index: SafetensorsIndex,
  qc: QuantizationConfig,
): void {
  const need = (name: string, shape?: number[]) => {
    if (!index.has(name)) throw new UserError(`${index.dir}: tensor "${name}" is missing`);
    const t = index.info(name);
    if (shape && (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i]))) {
      throw new UserError(
        `${t.file}: tensor "${name}" has shape [${t.shape}], expected [${shape}]`,
      );
    }
  };
  for (let l = 0; l < cfg.layers; l++) {
    for (const lin of linearNames(l, cfg)) {
      const name = lin.name.replace(/\.weight$/, "");
      const m = qc.modules[name];
      if (!m) {
        need(lin.name, [lin.out, lin.in]);
      } else if (qc.quant_method === "rtn" || qc.quant_method === "gptq") {
        const groups = Math.ceil(lin.in / (m as RtnModule).group);
        need(`${name}.qweight`, [lin.out, lin.in]);
        need(`${name}.scales`, [lin.out, groups]);
        need(`${name}.zeros`, [lin.out, groups]);
      } else {
        checkClusterTensors(index, name, m as ClusterModule, lin);
      }
    }
    need(`model.layers.${l}.input_layernorm.weight`, [cfg.hidden]);
    need(`model.layers.${l}.post_attention_layernorm.weight`, [cfg.hidden]);
  }
  need("model.embed_tokens.weight", [cfg.vocab, cfg.hidden]);
  need("model.norm.weight", [cfg.hidden]);
  if (!cfg.tieEmbeddings) need("lm_head.weight", [cfg.vocab, cfg.hidden]);
}
