// Compressed folders for the run tests: each fixture clustered without finetuning or evaluation
// (few k-means iterations; quality is not the point), with matrix kinds at different code widths
// so that several packings and forms run in one model. Made once per test process.
import { Progress } from "../../src/util/progress.ts";
import { compress } from "../../src/pipeline/compress.ts";
import { quickSettings } from "../settings.ts";

const made = new Map<string, Promise<string>>();

/**
 * Widths per kind: q 6 bits (n 37, d 2), k 3 bits (n 5, d 3), v 1 bit (n 2, d 1), o 4 bits
 * (n 16, d 4), gate 9 bits (n 300, d 8, out not a multiple of 8 on stories260K's 172), up and
 * down 8 bits (n 256, d 4).
 */
export function compressedFolder(model: string): Promise<string> {
  let p = made.get(model);
  if (!p) {
    p = make(model);
    made.set(model, p);
  }
  return p;
}

async function make(model: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-run-" });
  const out = `${dir}/out`;
  await compress(
    quickSettings(model, dir, {
      d: 4,
      n: 256,
      overrides: {
        q: { d: 2, n: 37 },
        k: { d: 3, n: 5 },
        v: { d: 1, n: 2 },
        o: { d: 4, n: 16 },
        gate: { d: 8, n: 300 },
      },
      iters: 4,
    }),
    new Progress(true),
  );
  return out;
}
