// `cluscomp export --dequantize IN OUT [--dtype T]`: a plain checkpoint other tools load as usual.
import { UserError } from "../errors.ts";
import { dequantize, EXPORT_DTYPES } from "../export/dequantize.ts";
import { Progress } from "../util/progress.ts";
import { parseFlags } from "./args.ts";

export const EXPORT_HELP = `cluscomp export: write a compressed folder as a plain model

Usage: deno task export --dequantize IN OUT [--dtype f32|f16|bf16]

  --dequantize   decode every compressed linear and write an ordinary Hugging Face
                 safetensors folder
  --dtype T      f32, f16 or bf16: the dtype of every weight written (default: the original's,
                 config.json's torch_dtype, else the embedding's). f32 keeps the decoded
                 weights exact; f16 and bf16 round them, which changes the logits
  --quiet        no progress on stderr
  -h, --help     this text
`;

export async function exportMain(argv: string[]): Promise<number> {
  const { values, positionals } = parseFlags("export", argv, {
    dequantize: { type: "boolean" },
    dtype: { type: "string" },
    quiet: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  }, 2);
  if (values.help) {
    console.log(EXPORT_HELP);
    return 0;
  }
  if (!values.dequantize) throw new UserError("export: --dequantize is the only export there is");
  const dt = values.dtype;
  if (dt !== undefined && (typeof dt !== "string" || !Object.hasOwn(EXPORT_DTYPES, dt))) {
    throw new UserError(`export: --dtype must be f32, f16 or bf16 (got "${dt}")`);
  }
  if (positionals.length !== 2) throw new UserError("export: give IN and OUT folders");
  const [inDir, outDir] = positionals;
  const dtype = dt === undefined ? undefined : EXPORT_DTYPES[dt as string].dtype;
  await dequantize(inDir, outDir, new Progress(Boolean(values.quiet)), dtype);
  console.log(`wrote ${outDir}`);
  return 0;
}
