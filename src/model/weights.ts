// Where block weights come from: a dense Hugging Face checkpoint, or (later stages) codebooks.
// Linear weights are always handed out transposed, W^T [in, out], the layout the kernels use.
import {
  type LinearKind,
  type LinearName as LinearInfo,
  linearNames,
  type ModelConfig,
} from "../io/config.ts";
import type { SafetensorsIndex } from "../io/safetensors.ts";

export { LINEAR_KINDS as LINEARS } from "../io/config.ts";
export type LinearName = LinearKind;

/** The linear of one kind in one layer: HF tensor name and [out, in]. */
export function linearOf(cfg: ModelConfig, layer: number, kind: LinearKind): LinearInfo {
  return linearNames(layer, cfg).find((l) => l.kind === kind)!;
}

export interface WeightSource {
  /** W^T [in, out] of one linear weight of one block. */
  linearT(layer: number, name: LinearName): Promise<Float32Array>;
  /** A vector or matrix stored as is (norm weights, embeddings). */
  tensor(name: string): Promise<Float32Array>;
  /** lm_head^T [hidden, vocab] (the embedding transposed when tied). */
  lmHeadT(): Promise<Float32Array>;
}

/** Transposes a row-major [rows, cols] matrix. */
export function transpose(w: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  const B = 64;
  for (let r0 = 0; r0 < rows; r0 += B) {
    const r1 = Math.min(rows, r0 + B);
    for (let c0 = 0; c0 < cols; c0 += B) {
      const c1 = Math.min(cols, c0 + B);
      for (let r = r0; r < r1; r++) {
        for (let c = c0; c < c1; c++) out[c * rows + r] = w[r * cols + c];
      }
    }
  }
  return out;
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
