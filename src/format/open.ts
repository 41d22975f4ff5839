// Opens a model folder, dense or compressed: config, checked tensor index, weight source.
import {
  checkCompressedTensors,
  CompressedSource,
  type QuantizationConfig,
  readQuantConfig,
} from "./compressed.ts";
import { checkTensors, loadConfig, type ModelConfig } from "../io/config.ts";
import { SafetensorsIndex } from "../io/safetensors.ts";
import type { FileSource } from "../io/source.ts";
import { DenseSource, type WeightSource } from "../model/weights.ts";

export interface OpenModel {
  dir: string;
  cfg: ModelConfig;
  index: SafetensorsIndex;
  source: WeightSource;
  quant: QuantizationConfig | null;
}

/** A folder by its path, or any FileSource (an HTTP folder in a browser page); `dir` names it. */
export async function openModel(from: string | FileSource): Promise<OpenModel> {
  const cfg = await loadConfig(from);
  const dir = typeof from === "string" ? from : from.label;
  const quant = await readQuantConfig(from);
  const index = await SafetensorsIndex.open(from);
  if (quant) {
    checkCompressedTensors(cfg, index, quant);
    return { dir, cfg, index, quant, source: new CompressedSource(cfg, index, quant) };
  }
  checkTensors(cfg, index);
  return { dir, cfg, index, quant, source: new DenseSource(cfg, index) };
}
