// The compressed model folder: a Hugging Face folder whose config.json carries a
// quantization_config, with `<module>.codebook` / `<module>.codes` (ClusComp) or
// `<module>.qweight` / `.scales` / `.zeros` (RTN) beside the untouched tensors.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { decodeT } from "../cluster/vectorize.ts";
import { rtnDequantize } from "../cluster/rtn.ts";
import { UserError } from "../errors.ts";
import { type LinearKind, linearNames, type ModelConfig } from "../io/config.ts";
import { type Dtype, SafetensorsIndex, writeSafetensors } from "../io/safetensors.ts";
import type { WeightSource } from "../model/weights.ts";
import { transpose } from "../util/matrix.ts";

export interface ClusterModule {
  d: number;
  n: number;
  pad: number;
  splits: number;
  codebook_dtype: "f16" | "bf16";
  codes_dtype: "U8" | "U16";
}

export interface RtnModule {
  bits: number;
  group: number;
}

export interface QuantizationConfig {
  quant_method: "cluscomp" | "rtn";
  bits_per_weight: number;
  stored_bits_per_weight: number;
  modules: Record<string, ClusterModule | RtnModule>;
}

export interface TensorBytes {
  name: string;
  dtype: Dtype;
  shape: number[];
  data: Uint8Array;
}

/** The quantization_config of a folder's config.json, or null for a dense model. */
export async function readQuantConfig(dir: string): Promise<QuantizationConfig | null> {
  const path = join(dir, "config.json");
  if (!existsSync(path)) return null;
  const raw = JSON.parse(await Deno.readTextFile(path));
  const qc = raw.quantization_config;
  if (!qc) return null;
  if (qc.quant_method !== "cluscomp" && qc.quant_method !== "rtn") {
    throw new UserError(
      `${path}: unsupported quantization_config.quant_method "${qc.quant_method}" (supported: cluscomp, rtn)`,
    );
  }
  if (typeof qc.modules !== "object" || qc.modules === null) {
    throw new UserError(`${path}: quantization_config.modules is missing`);
  }
  return qc as QuantizationConfig;
}

/** Module name (no .weight suffix) of a linear. */
export function moduleName(cfg: ModelConfig, layer: number, kind: LinearKind): string {
  return linearNames(layer, cfg).find((l) => l.kind === kind)!.name.replace(/\.weight$/, "");
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
    const file = this.index.dir;
    if (this.qc.quant_method === "rtn") {
      const r = m as RtnModule;
      const q = await this.index.readRaw(`${name}.qweight`);
      const scales = await this.index.readF32(`${name}.scales`);
      const zeros = await this.index.readRaw(`${name}.zeros`);
      const w = rtnDequantize({ q, scales, zeros }, lin.out, lin.in, r.group);
      return transpose(w, lin.out, lin.in);
    }
    const c = m as ClusterModule;
    const cb = await this.index.readF32(`${name}.codebook`);
    const codesInfo = this.index.info(`${name}.codes`);
    const cols = Math.ceil(lin.out / c.d);
    if (codesInfo.shape[0] !== lin.in || codesInfo.shape[1] !== cols) {
      throw new UserError(
        `${file}: ${name}.codes has shape [${codesInfo.shape}], expected [${lin.in}, ${cols}]`,
      );
    }
    const raw = await this.index.readRaw(`${name}.codes`);
    const codes = codesInfo.dtype === "U8"
      ? raw
      : new Uint16Array(raw.buffer, raw.byteOffset, raw.byteLength / 2);
    for (let i = 0; i < codes.length; i++) {
      if (codes[i] >= c.n) {
        throw new UserError(`${file}: ${name}.codes holds code ${codes[i]} >= n = ${c.n}`);
      }
    }
    const rowsPer = lin.in / c.splits;
    const out = new Float32Array(lin.in * lin.out);
    for (let s = 0; s < c.splits; s++) {
      const centroids = cb.subarray(s * c.n * c.d, (s + 1) * c.n * c.d);
      const part = codes.subarray(s * rowsPer * cols, (s + 1) * rowsPer * cols);
      out.set(decodeT(centroids, part, rowsPer, lin.out, c.d), s * rowsPer * lin.out);
    }
    return out;
  }

  tensor(name: string): Promise<Float32Array> {
    return this.index.readF32(name);
  }

  async lmHeadT(): Promise<Float32Array> {
    const name = this.cfg.tieEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    return transpose(await this.index.readF32(name), this.cfg.vocab, this.cfg.hidden);
  }
}

const COPIED = [
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "generation_config.json",
];

/**
 * Writes a model folder (compressed when `qc` is given, dense otherwise) atomically: everything goes to a temporary folder beside `outDir`,
 * which is renamed into place at the end. Shard 1 holds the non-block tensors, shard i + 2 block i.
 */
export async function writeCompressedModel(
  srcDir: string,
  outDir: string,
  cfg: ModelConfig,
  qc: QuantizationConfig | null,
  blockTensors: (layer: number) => Promise<TensorBytes[]>,
  index: SafetensorsIndex,
  beforeRename?: (tmpDir: string) => Promise<void>,
): Promise<void> {
  const tmp = `${outDir}.tmp-${Deno.pid}`;
  await Deno.remove(tmp, { recursive: true }).catch(() => {});
  await Deno.mkdir(tmp, { recursive: true });
  const config = JSON.parse(await Deno.readTextFile(join(srcDir, "config.json")));
  if (qc) config.quantization_config = qc;
  else delete config.quantization_config;
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
    return { name, dtype: info.dtype, shape: info.shape, data: await index.readRaw(name) };
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
  await beforeRename?.(tmp);
  if (existsSync(outDir)) await Deno.remove(outDir, { recursive: true });
  await Deno.rename(tmp, outDir);
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
      } else if (qc.quant_method === "rtn") {
        const groups = Math.ceil(lin.in / (m as RtnModule).group);
        need(`${name}.qweight`, [lin.out, lin.in]);
        need(`${name}.scales`, [lin.out, groups]);
        need(`${name}.zeros`, [lin.out, groups]);
      } else {
        const c = m as ClusterModule;
        need(`${name}.codebook`, c.splits === 1 ? [c.n, c.d] : [c.splits, c.n, c.d]);
        need(`${name}.codes`, [lin.in, Math.ceil(lin.out / c.d)]);
      }
    }
    need(`model.layers.${l}.input_layernorm.weight`, [cfg.hidden]);
    need(`model.layers.${l}.post_attention_layernorm.weight`, [cfg.hidden]);
  }
  need("model.embed_tokens.weight", [cfg.vocab, cfg.hidden]);
  need("model.norm.weight", [cfg.hidden]);
  if (!cfg.tieEmbeddings) need("lm_head.weight", [cfg.vocab, cfg.hidden]);
}
