// Evaluation text: reading and GPTQ-style windows.
import { UserError } from "../errors.ts";

/** Reads a UTF-8 text file with CRLF normalized to LF; missing or blank -> UserError. */
export async function readText(path: string): Promise<string> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UserError(`Cannot read ${path}: no such file`);
    throw new UserError(`Cannot read ${path}: ${(e as Error).message.split("\n")[0]}`);
  }
  if (text.trim() === "") throw new UserError(`Cannot read ${path}: file is empty`);
  return text.replace(/\r\n/g, "\n");
}

/** floor(n / seqlen) non-overlapping windows of `seqlen` tokens (the first maxWindows if given). */
export function gptqWindows(
  ids: Int32Array | number[],
  seqlen: number,
  maxWindows?: number,
): Int32Array[] {
  if (!Number.isSafeInteger(seqlen) || seqlen <= 0) {
    throw new UserError(`sequence length must be a positive integer, got ${seqlen}`);
  }
  if (maxWindows !== undefined && (!Number.isSafeInteger(maxWindows) || maxWindows < 0)) {
    throw new UserError(`window count must be a non-negative integer, got ${maxWindows}`);
  }
  const n = ids.length;
  if (n < seqlen) {
    throw new UserError(`text has ${n} tokens, fewer than one window of seqlen ${seqlen}`);
  }
  let count = Math.floor(n / seqlen);
  if (maxWindows !== undefined) count = Math.min(count, maxWindows);
  const all = ids instanceof Int32Array ? ids : Int32Array.from(ids);
  const out: Int32Array[] = [];
  for (let w = 0; w < count; w++) out.push(all.slice(w * seqlen, (w + 1) * seqlen));
  return out;
}
