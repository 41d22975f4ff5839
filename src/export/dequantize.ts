// `export --dequantize`: a compressed folder decoded into a plain Hugging Face checkpoint. Every
// float tensor is written in one dtype: the one asked for, else the original's (config.json's
// torch_dtype when it is float32 / float16 / bfloat16, else the dtype of the stored embedding).
// F32 keeps the decoded weights exact; F16 / BF16 round them (and so change the logits).
import { UserError } from "../errors.ts";
import { type TensorBytes, writeCompressedModel } from "../format/compressed.ts";
import { linearNames } from "../io/config.ts";
import { bytesToF32, type Dtype, f32ToBf16Bytes, f32ToF16Bytes } from "../io/safetensors.ts";
import { openModel } from "../format/open.ts";
import { transpose } from "../util/matrix.ts";
import type { Progress } from "../util/progress.ts";

export type FloatDtype = "F32" | "F16" | "BF16";

/** --dtype values and the safetensors dtype and torch_dtype each stands for. */
export const EXPORT_DTYPES: Record<string, { dtype: FloatDtype; torch: string }> = {
  f32: { dtype: "F32", torch: "float32" },
  f16: { dtype: "F16", torch: "float16" },
  bf16: { dtype: "BF16", torch: "bfloat16" },
};

/** torch_dtype -> safetensors dtype (EXPORT_DTYPES read the other way). */
const TORCH_DTYPES: Record<string, FloatDtype> = Object.fromEntries(
  Object.values(EXPORT_DTYPES).map((e) => [e.torch, e.dtype]),
);

/** f32 values as bytes of a float dtype (F16 / BF16 round to nearest even). */
export function encodeFloat(w: Float32Array, dtype: FloatDtype): Uint8Array {
  return dtype === "BF16"
    ? f32ToBf16Bytes(w)
    : dtype === "F16"
    ? f32ToF16Bytes(w)
    : new Uint8Array(w.buffer, w.byteOffset, w.byteLength);
}

function isFloat(d: Dtype): d is FloatDtype {
  return d === "F32" || d === "F16" || d === "BF16";
}

export async function dequantize(
  inDir: string,
  outDir: string,
  progress: Progress,
  want?: FloatDtype,
): Promise<void> {
  const m = await openModel(inDir);
  try {
    if (!m.quant) {
      throw new UserError(`${inDir}: is not a compressed folder (no quantization_config)`);
    }
    const { cfg, index, source } = m;
    const embDtype = index.info("model.embed_tokens.weight").dtype;
    const original = (cfg.torchDtype ? TORCH_DTYPES[cfg.torchDtype] : undefined) ??
      (isFloat(embDtype) ? embDtype : "F32");
    const dtype = want ?? original;
    if (m.quant.quant_method === "cluscomp") {
      const cbs = new Set(
        Object.values(m.quant.modules).map((q) =>
          (q as { codebook_dtype?: string }).codebook_dtype
        ),
      );
      if (cbs.has("f16") && dtype === "BF16") {
        progress.note("export", "f16 codebook values are rounded to bf16");
      } else if (cbs.has("bf16") && dtype === "F16") {
        progress.note("export", "bf16 codebook values outside f16's range are rounded to f16");
      }
    }
    const torch = Object.values(EXPORT_DTYPES).find((e) => e.dtype === dtype)!.torch;
    // Untouched tensors in the same dtype (exact when widening, rounded when narrowing).
    const copied = (t: TensorBytes): TensorBytes =>
      !isFloat(t.dtype) || t.dtype === dtype
        ? t
        : { ...t, dtype, data: encodeFloat(bytesToF32(t.data, t.dtype), dtype) };
    await writeCompressedModel(
      inDir,
      outDir,
      cfg,
      null,
      async (l) => {
        const out: TensorBytes[] = [];
        for (const lin of linearNames(l, cfg)) {
          const w = transpose(await source.linearT(l, lin.kind), lin.in, lin.out);
          out.push({
            name: lin.name,
            dtype,
            shape: [lin.out, lin.in],
            data: encodeFloat(w, dtype),
          });
        }
        progress.update({ stage: "export", done: l + 1, total: cfg.layers, block: l });
        return out;
      },
      index,
      undefined,
      { copied, config: { torch_dtype: torch } },
    );
  } finally {
    m.index.close();
  }
}
