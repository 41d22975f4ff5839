// Embedding lookup into feature-major activations, one dispatch per bound row chunk of the table.
import code from "../../shaders/embedding.wgsl" with { type: "text" };
import { type BufferRange, fits, type Gpu, grid } from "../gpu/device.ts";

const WG = 256;

/**
 * out[h, t] = table[ids[t] - row0, h] for table [V, H] row-major (rows row0 .. row0 + V - 1 of
 * the vocabulary), ids [T] u32, out [H, T] feature-major. Tokens whose id is outside
 * [row0, row0 + V) are left untouched. Check ids with checkIds on the host first.
 */
export function embed(
  gpu: Gpu,
  table: BufferRange,
  ids: BufferRange,
  out: BufferRange,
  V: number,
  H: number,
  T: number,
  row0 = 0,
): void {
  fits("embed", "table", table, V * H);
  fits("embed", "ids", ids, T);
  fits("embed", "out", out, H * T);
  const [gx, gy] = grid(Math.ceil((H * T) / WG), gpu.limits.maxWorkgroups);
  gpu.dispatch(gpu.pipeline("embedding", code, "embed"), [
    new Uint32Array([V, H, T, row0, gx * WG]),
    table,
    ids,
    out,
  ], [gx, gy]);
}

/** Throws on the first token id outside [0, vocab). */
export function checkIds(ids: ArrayLike<number>, vocab: number, label = "token ids"): void {
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!(Number.isInteger(id) && id >= 0 && id < vocab)) {
      throw new Error(
        `${label}: id ${id} at position ${i} is outside the vocabulary [0, ${vocab})`,
      );
    }
  }
}
