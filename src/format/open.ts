// Opens a model folder, dense or compressed: config, checked tensor index, weight source.
import {
  checkCompressedTensors,
  CompressedSource,
  type QuantizationConfig,
  readQuantConfig,
} from "./compressed.ts";
import { checkTensors, loadConfig, type ModelConfig } from "../io/config.ts";
import { SafetensorsIndex } from "../io/safetensors.ts";
import { DenseSource, type WeightSource } from "../model/weights.ts";

export interface OpenModel {
  dir: string;
  cfg: ModelConfig;
  index: SafetensorsIndex;
  source: WeightSource;
  quant: QuantizationConfig | null;
}

export async function openModel(dir: string): Promise<OpenModel> {
  const cfg = await loadConfig(dir);
  const quant = await readQuantConfig(dir);
  const index = await SafetensorsIndex.open(dir);
  if (quant) {
    checkCompressedTensors(cfg, index, quant);
    return { dir, cfg, index, quant, source: new CompressedSource(cfg, index, quant) };
  }
  checkTensors(cfg, index);
  return { dir, cfg, index, quant, source: new DenseSource(cfg, index) };
}
