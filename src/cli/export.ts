// `cluscomp export --dequantize IN OUT`: a plain checkpoint other tools load as usual.
import { UserError } from "../errors.ts";
import { dequantize } from "../export/dequantize.ts";
import { Progress } from "../pipeline/progress.ts";
import { parseFlags } from "./args.ts";

export const EXPORT_HELP = `cluscomp export: write a compressed folder as a plain model

Usage: deno task export --dequantize IN OUT

  --dequantize   decode every compressed linear into the original dtype (the dtype of the
                 embedding) and write an ordinary Hugging Face safetensors folder
  --quiet        no progress on stderr
  -h, --help     this text
`;

export async function exportMain(argv: string[]): Promise<number> {
  const { values, positionals } = parseFlags("export", argv, {
    dequantize: { type: "boolean" },
    quiet: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  }, 2);
  if (values.help) {
    console.log(EXPORT_HELP);
    return 0;
  }
  if (!values.dequantize) throw new UserError("export: --dequantize is the only export there is");
  if (positionals.length !== 2) throw new UserError("export: give IN and OUT folders");
  const [inDir, outDir] = positionals;
  await dequantize(inDir, outDir, new Progress(Boolean(values.quiet)));
  console.log(`wrote ${outDir}`);
  return 0;
}
