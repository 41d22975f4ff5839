// SHA-256 helpers: of bytes, of a whole file (streamed), and of a model's input files with a
// small cache of file hashes keyed by path, size and modification time.
import { createHash } from "node:crypto";
import { resolve } from "node:path";
import { z } from "zod";
import { writeFileAtomic } from "./atomic.ts";

export async function sha256(data: Uint8Array | string): Promise<string> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const d = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

const CHUNK = 8 << 20;

/** SHA-256 of a whole file, read in 8 MiB chunks (memory stays flat for any file size). */
export async function sha256File(path: string): Promise<string> {
  const h = createHash("sha256");
  const f = await Deno.open(path, { read: true });
  try {
    const buf = new Uint8Array(CHUNK);
    while (true) {
      const n = await f.read(buf);
      if (n === null) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    f.close();
  }
  return h.digest("hex");
}

const HashCache = z.object({
  version: z.literal(1),
  files: z.record(
    z.string(),
    z.object({ size: z.number(), mtimeMs: z.number(), sha256: z.string().regex(/^[0-9a-f]{64}$/) }),
  ),
});
type HashCache = z.infer<typeof HashCache>;

/**
 * SHA-256 of each file (name -> hash), whole files, streamed. With `cachePath`, a file whose
 * absolute path, size and modification time match the cache is not read again: size and mtime
 * are the accepted trade-off (a file rewritten in place with the same size and mtime is taken as
 * unchanged). A missing, unreadable or malformed cache is ignored and rewritten.
 */
export async function sha256Files(
  files: { name: string; path: string }[],
  cachePath?: string,
): Promise<Record<string, string>> {
  let cache: HashCache = { version: 1, files: {} };
  if (cachePath) {
    try {
      const parsed = HashCache.safeParse(JSON.parse(await Deno.readTextFile(cachePath)));
      if (parsed.success) cache = parsed.data;
    } catch {
      // no cache or unreadable: hash everything
    }
  }
  const out: Record<string, string> = {};
  let changed = false;
  for (const { name, path } of files) {
    const abs = resolve(path);
    const st = await Deno.stat(abs);
    const mtimeMs = st.mtime?.getTime() ?? -1;
    const hit = cache.files[abs];
    if (hit && hit.size === st.size && hit.mtimeMs === mtimeMs && mtimeMs >= 0) {
      out[name] = hit.sha256;
      continue;
    }
    out[name] = await sha256File(abs);
    cache.files[abs] = { size: st.size, mtimeMs, sha256: out[name] };
    changed = true;
  }
  if (cachePath && changed) {
    try {
      await writeFileAtomic(cachePath, new TextEncoder().encode(JSON.stringify(cache)));
    } catch {
      // the cache only saves time
    }
  }
  return out;
}
