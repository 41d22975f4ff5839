// What a run's results are computed from: the SHA-256 of each input file (whole files, cached
// by size and mtime in the work directory), and one hash over all of them.
import { join, relative } from "node:path";
import { sha256, sha256Files } from "../io/hash.ts";

/** What the inputs are: the SHA-256 of each input file, and one hash over all of them. */
export interface InputHashes {
  /** File name (relative to the model folder) -> SHA-256 of the whole file. */
  files: Record<string, string>;
  hash: string;
}

/**
 * Hashes the inputs (config, tokenizer and every safetensors file, whole files). With `work`,
 * file hashes are cached in `work/input-hashes.json` by path, size and modification time, so a
 * rerun reads a large model only when a file's size or mtime changed.
 */
export async function inputsHash(
  dir: string,
  files: string[],
  work?: string,
): Promise<InputHashes> {
  const list = ["config.json", "tokenizer.json"].map((name) => ({ name, path: join(dir, name) }))
    .concat(files.map((path) => ({ name: relative(dir, path), path })));
  let cache: string | undefined;
  if (work) {
    try {
      await Deno.mkdir(work, { recursive: true });
      cache = join(work, "input-hashes.json");
    } catch {
      // no cache: WorkDir.open reports an unusable work directory
    }
  }
  const hashes = await sha256Files(list, cache);
  const lines = Object.keys(hashes).sort().map((n) => `${n} ${hashes[n]}`);
  return { files: hashes, hash: await sha256(lines.join("\n")) };
}
