// Where block weights come from: a dense Hugging Face checkpoint, or (later stages) codebooks.
// Linear weights are always handed out transposed, W^T [in, out], the layout the kernels use.
import {
  type LinearKind,
  type LinearName as LinearInfo,
  linearNames,
  type ModelConfig,
} from "../io/config.ts";
import type { CodebookShape } from "../io/pack.ts";
import type { SafetensorsIndex } from "../io/safetensors.ts";
import { transpose } from "../util/matrix.ts";

export { LINEAR_KINDS as LINEARS } from "../io/config.ts";
export type LinearName = LinearKind;

/** The linear of one kind in one layer: HF tensor name and [out, in]. */
export function linearOf(cfg: ModelConfig, layer: number, kind: LinearKind): LinearInfo {
  return linearNames(layer, cfg).find((l) => l.kind === kind)!;
}

/** A ClusComp linear as stored: codebooks and packed codes, never expanded. */
export interface CodebookData extends CodebookShape {
  /** f32 [splits * n, d] (decoded from the stored f16/bf16). */
  centroids: Float32Array;
  /** Packed codes of [in, ceil(out / d)] row-major as u32 words (src/io/pack.ts). */
  codes: Uint32Array;
}

export interface WeightSource {
  /** W^T [in, out] of one linear weight of one block. */
  linearT(layer: number, name: LinearName): Promise<Float32Array>;
  /**
   * The linear as codebook + packed codes when the source holds it that way (validated: every
   * code < n), else null (a dense or RTN linear: use linearT).
   */
  codebook?(layer: number, name: LinearName): Promise<CodebookData | null>;
  /** A vector or matrix stored as is (norm weights, embeddings). */
  tensor(name: string): Promise<Float32Array>;
  /** lm_head^T [hidden, vocab] (the embedding transposed when tied). */
  lmHeadT(): Promise<Float32Array>;
}

/** Weights read one tensor at a time from a safetensors checkpoint. */
export class DenseSource implements WeightSource {
  constructor(readonly cfg: ModelConfig, readonly index: SafetensorsIndex) {}

  async linearT(layer: number, name: LinearName): Promise<Float32Array> {
    const lin = linearOf(this.cfg, layer, name);
    return transpose(await this.index.readF32(lin.name), lin.out, lin.in);
  }

  tensor(name: string): Promise<Float32Array> {
    return this.index.readF32(name);
  }

  async lmHeadT(): Promise<Float32Array> {
    const name = this.cfg.tieEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    return transpose(await this.index.readF32(name), this.cfg.vocab, this.cfg.hidden);
  }
}

/** The same weights with every linear decoded to dense W^T (what a dequantized export holds). */
export function decodedView(src: WeightSource): WeightSource {
  return {
    linearT: (layer, name) => src.linearT(layer, name),
    tensor: (name) => src.tensor(name),
    lmHeadT: () => src.lmHeadT(),
  };
}
