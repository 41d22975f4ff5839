// Atomic file writes: temp file, fsync, rename, fsync of the folder.
import { basename, dirname, join } from "node:path";
import { UserError } from "../errors.ts";

/**
 * A temporary name beside `path`, unique across processes and hosts (pid and a random part):
 * processes on several machines may write the same file at once, and pods on a shared volume may
 * run with the same pid.
 */
export function tempName(path: string): string {
  const rand = crypto.getRandomValues(new Uint32Array(2)).join("");
  return `${path}.tmp-${Deno.pid}-${rand}`;
}

export async function writeFileAtomic(path: string, data: Uint8Array): Promise<void> {
  const tmp = tempName(path);
  const f = await Deno.open(tmp, { write: true, createNew: true });
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

/** A name beside `path` that does not exist yet. */
export function besideName(path: string, tag: string): string {
  const rand = crypto.getRandomValues(new Uint32Array(1))[0].toString(36);
  return join(dirname(path), `.${basename(path)}.${tag}-${Deno.pid}-${rand}`);
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/**
 * Moves the finished folder `tmp` to `out`. An existing `out` is renamed aside first, the new one
 * renamed in, then the old one removed; if the second rename fails the old one is put back. At
 * every moment `out` is either the complete old folder, absent (between the two renames), or the
 * complete new one.
 */
export async function replaceFolder(tmp: string, out: string): Promise<void> {
  const parent = dirname(out);
  if (!(await exists(out))) {
    await Deno.rename(tmp, out);
    await syncDir(parent);
    return;
  }
  const old = besideName(out, "old");
  await Deno.rename(out, old);
  try {
    await Deno.rename(tmp, out);
  } catch (e) {
    await Deno.rename(old, out);
    throw e;
  }
  await syncDir(parent);
  await Deno.remove(old, { recursive: true });
}
