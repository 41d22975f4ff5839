// Atomic file writes: temp file, fsync, rename, fsync of the folder.
import { dirname, join } from "node:path";
import { UserError } from "../errors.ts";

export async function writeFileAtomic(path: string, data: Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${Deno.pid}`;
  const f = await Deno.open(tmp, { write: true, create: true, truncate: true });
  try {
    let off = 0;
    while (off < data.length) off += await f.write(data.subarray(off));
    await f.sync();
  } finally {
    f.close();
  }
  await Deno.rename(tmp, path);
  await syncDir(dirname(path));
}

export async function syncDir(dir: string): Promise<void> {
  try {
    const d = await Deno.open(dir, { read: true });
    try {
      await d.sync();
    } finally {
      d.close();
    }
  } catch {
    // Some file systems cannot sync a folder; the rename is still atomic.
  }
}

/** Fails early, before any work, when the output's parent folder cannot be written. */
export async function checkWritable(out: string): Promise<void> {
  const parent = dirname(out);
  try {
    await Deno.mkdir(parent, { recursive: true });
    const probe = join(parent, `.cluscomp-probe-${Deno.pid}`);
    await Deno.writeTextFile(probe, "");
    await Deno.remove(probe);
  } catch (e) {
    throw new UserError(`Cannot write ${out}: ${(e as Error).message.split("\n")[0]}`);
  }
}
