// A model folder rewritten with some tensors replaced (the output of whole-model finetuning:
// new codebooks, norms, lm_head), everything else kept byte for byte, written atomically.
//
// Each shard is copied as is and the replaced tensors' bytes are overwritten where they lie:
// a replacement keeps the tensor's stored dtype and shape, so the header, the tensor order, the
// __metadata__ and every other tensor's bytes stay exactly as they were.
import { basename, dirname, join, resolve } from "node:path";
import { UserError } from "../errors.ts";
import { besideName, replaceFolder, syncDir } from "../io/atomic.ts";
import {
  type Dtype,
  f32ToBf16Bytes,
  f32ToF16Bytes,
  SafetensorsIndex,
  type TensorInfo,
} from "../io/safetensors.ts";

/**
 * Report files of a compress run (report.json, report.md, loss.svg). Their perplexity table and
 * losses describe the folder's old weights, so writeUpdatedFolder leaves them out when it replaces
 * any tensor; the caller writes a new report through `extraFiles`.
 */
export const STALE_REPORT_FILES: readonly string[] = ["report.json", "report.md", "loss.svg"];

/** f32 values as the bytes of a tensor stored in `dtype` (F32, F16 or BF16). */
function encodeAs(x: Float32Array, dtype: Dtype, name: string): Uint8Array {
  switch (dtype) {
    case "F32":
      return new Uint8Array(x.buffer, x.byteOffset, x.byteLength).slice();
    case "F16":
      return f32ToF16Bytes(x);
    case "BF16":
      return f32ToBf16Bytes(x);
    default:
      throw new UserError(`tensor "${name}" has dtype ${dtype}, not a float: cannot replace it`);
  }
}

/** Checks every replacement against the folder: the tensor exists, is a float, same size. */
function checkReplacements(
  index: SafetensorsIndex,
  replace: Map<string, Float32Array>,
): Map<string, TensorInfo[]> {
  const byFile = new Map<string, TensorInfo[]>();
  for (const [name, values] of replace) {
    if (!index.has(name)) {
      throw new UserError(`${index.dir}: tensor "${name}" to replace is not in the folder`);
    }
    const t = index.info(name);
    if (t.dtype !== "F32" && t.dtype !== "F16" && t.dtype !== "BF16") {
      throw new UserError(`${t.file}: tensor "${name}" has dtype ${t.dtype}, not a float`);
    }
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (values.length !== count) {
      throw new UserError(
        `${t.file}: tensor "${name}" has ${count} elements (shape [${t.shape}]) but its ` +
          `replacement has ${values.length}`,
      );
    }
    const list = byFile.get(t.file) ?? [];
    list.push(t);
    byFile.set(t.file, list);
  }
  return byFile;
}

async function writeAllAt(f: Deno.FsFile, offset: number, data: Uint8Array): Promise<void> {
  await f.seek(offset, Deno.SeekMode.Start);
  let done = 0;
  while (done < data.length) done += await f.write(data.subarray(done));
}

/** Overwrites the given tensors' bytes of a shard where they lie, and fsyncs it. */
async function patchFile(
  dst: string,
  patches: TensorInfo[],
  replace: Map<string, Float32Array>,
): Promise<void> {
  const f = await Deno.open(dst, { read: true, write: true });
  try {
    for (const t of patches) {
      const bytes = encodeAs(replace.get(t.name)!, t.dtype, t.name);
      if (bytes.length !== t.nbytes) {
        throw new Error(`${dst}: tensor "${t.name}" encodes to ${bytes.length}, not ${t.nbytes}`);
      }
      await writeAllAt(f, t.offset, bytes);
    }
    await f.sync();
  } finally {
    f.close();
  }
}

async function syncFile(path: string): Promise<void> {
  const f = await Deno.open(path, { read: true, write: true });
  try {
    await f.sync();
  } finally {
    f.close();
  }
}

async function writeSynced(path: string, data: Uint8Array | string): Promise<void> {
  if (typeof data === "string") await Deno.writeTextFile(path, data);
  else await Deno.writeFile(path, data);
  await syncFile(path);
}

/** Copies a folder's files (recursively) into `dst`, skipping top-level names in `skip`. */
async function copyTree(
  src: string,
  dst: string,
  skip: Set<string>,
  perFile: (from: string, to: string) => Promise<void>,
): Promise<void> {
  for await (const e of Deno.readDir(src)) {
    if (skip.has(e.name)) continue;
    const from = join(src, e.name), to = join(dst, e.name);
    const st = await Deno.stat(from); // follows links: a linked file is copied as a file
    if (st.isDirectory) {
      await Deno.mkdir(to);
      await copyTree(from, to, new Set(), perFile);
      await syncDir(to);
    } else if (st.isFile) {
      await perFile(from, to);
    }
  }
}

/**
 * Writes `src` to `out` with the tensors in `replace` (HF name -> flat f32 values) replaced:
 * each is converted to its stored dtype (F32, F16 or BF16, round to nearest even) and keeps its
 * stored shape. Every other file is copied byte for byte (shards, config.json, tokenizer files,
 * model.safetensors.index.json, anything else), except the previous report (STALE_REPORT_FILES)
 * when `replace` is not empty; `extraFiles` (name -> bytes or text) are added, replacing a file
 * of the same name.
 *
 * Throws, before writing anything, when a name is not a tensor of the folder, is not a float, or
 * its replacement's length differs from the stored element count. The output is built in a
 * temporary folder beside `out` (files fsynced) and moved into place by replaceFolder, so `out` is
 * never partial; `src === out` updates in place. Memory: the replacements, and one tensor's
 * converted bytes at a time (shards are copied by the file system and patched in place).
 */
export async function writeUpdatedFolder(
  src: string,
  out: string,
  replace: Map<string, Float32Array>,
  extraFiles: Record<string, Uint8Array | string> = {},
): Promise<void> {
  for (const name of Object.keys(extraFiles)) {
    if (!name || name !== basename(name) || name === "." || name === "..") {
      throw new UserError(`extra file name ${JSON.stringify(name)} is not a plain file name`);
    }
  }
  const index = await SafetensorsIndex.open(src);
  let byFile: Map<string, TensorInfo[]>;
  try {
    byFile = checkReplacements(index, replace);
  } finally {
    index.close();
  }
  const patches = new Map<string, TensorInfo[]>();
  for (const [file, list] of byFile) patches.set(resolve(file), list);

  const outAbs = resolve(out);
  await Deno.mkdir(dirname(outAbs), { recursive: true });
  const tmp = besideName(outAbs, "tmp");
  await Deno.mkdir(tmp);
  try {
    const skip = new Set(Object.keys(extraFiles));
    if (replace.size > 0) { for (const f of STALE_REPORT_FILES) skip.add(f); }
    await copyTree(resolve(src), tmp, skip, async (from, to) => {
      const list = patches.get(from);
      if (list) {
        await Deno.copyFile(from, to);
        await patchFile(to, list, replace);
        patches.delete(from);
      } else {
        await Deno.copyFile(from, to);
        await syncFile(to);
      }
    });
    if (patches.size > 0) {
      throw new Error(`shards not found while copying ${src}: ${[...patches.keys()].join(", ")}`);
    }
    for (const [name, data] of Object.entries(extraFiles)) {
      await writeSynced(join(tmp, name), data);
    }
    await syncDir(tmp);
    await replaceFolder(tmp, outAbs);
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
}

/**
 * Replaces tensors of a folder no one else sees yet (e.g. compress's temporary output before it
 * moves into place), in place: each shard's replaced bytes are overwritten where they lie, no
 * copy. Checks as writeUpdatedFolder, before writing anything.
 */
export async function patchFolder(dir: string, replace: Map<string, Float32Array>): Promise<void> {
  const index = await SafetensorsIndex.open(dir);
  let byFile: Map<string, TensorInfo[]>;
  try {
    byFile = checkReplacements(index, replace);
  } finally {
    index.close();
  }
  for (const [file, list] of byFile) await patchFile(file, list, replace);
}
