// `export --dequantize`: a compressed folder decoded into a plain Hugging Face checkpoint, the
// linear weights in the original dtype (the dtype of the untouched embedding), everything else
// copied as stored.
import { UserError } from "../errors.ts";
import { type TensorBytes, writeCompressedModel } from "../format/compressed.ts";
import { linearNames } from "../io/config.ts";
import { f32ToBf16Bytes, f32ToF16Bytes } from "../io/safetensors.ts";
import { openModel } from "../model/open.ts";
import { transpose } from "../util/matrix.ts";
import type { Progress } from "../pipeline/progress.ts";

export async function dequantize(inDir: string, outDir: string, progress: Progress): Promise<void> {
  const m = await openModel(inDir);
  if (!m.quant) {
    throw new UserError(`${inDir}: is not a compressed folder (no quantization_config)`);
  }
  const { cfg, index, source } = m;
  const dtype = index.info("model.embed_tokens.weight").dtype;
  if (dtype === "BF16" && m.quant.quant_method === "cluscomp") {
    const dt = Object.values(m.quant.modules)[0] as { codebook_dtype?: string };
    if (dt.codebook_dtype === "f16") {
      progress.note("export", "f16 codebook values are rounded to the model's bf16 dtype");
    }
  }
  const encode = (w: Float32Array): Uint8Array =>
    dtype === "BF16"
      ? f32ToBf16Bytes(w)
      : dtype === "F16"
      ? f32ToF16Bytes(w)
      : new Uint8Array(w.buffer, w.byteOffset, w.byteLength);
  try {
    await writeCompressedModel(inDir, outDir, cfg, null, async (l) => {
      const out: TensorBytes[] = [];
      for (const lin of linearNames(l, cfg)) {
        const w = transpose(await source.linearT(l, lin.kind), lin.in, lin.out);
        out.push({ name: lin.name, dtype, shape: [lin.out, lin.in], data: encode(w) });
      }
      progress.update({ stage: "export", done: l + 1, total: cfg.layers, block: l });
      return out;
    }, index);
  } finally {
    index.close();
  }
}
