// The model folder for the browser page: GET /model/files lists the top-level files
// [{name, size}]; GET /model/<name> sends one of them, with single-range requests (206 / 416).
// Only names in the folder's own listing are served, so no path can leave it.
import { ApiError } from "./errors.ts";

export interface FileEntry {
  name: string;
  size: number;
}

/** Top-level plain files of `dir`, sorted by name. */
export async function listFiles(dir: string): Promise<FileEntry[]> {
  const out: FileEntry[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (!e.isFile) continue;
    const info = await Deno.stat(`${dir}/${e.name}`);
    out.push({ name: e.name, size: info.size });
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/**
 * The byte range [start, end] (inclusive) a Range header asks of a file of `size` bytes; null
 * for no header or one we ignore (not bytes, several ranges: the whole file is sent); "bad"
 * when it cannot be satisfied.
 */
export function parseRange(header: string | null, size: number): [number, number] | null | "bad" {
  if (header === null) return null;
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header);
  if (!m) return /^\s*bytes\s*=/i.test(header) && !header.includes(",") ? "bad" : null;
  const [a, b] = [m[1], m[2]];
  if (a === "" && b === "") return "bad";
  if (a === "") {
    // suffix: the last b bytes
    const n = Number(b);
    if (n === 0 || size === 0) return "bad";
    return [Math.max(0, size - n), size - 1];
  }
  const start = Number(a);
  const end = b === "" ? size - 1 : Math.min(Number(b), size - 1);
  if (start >= size || (b !== "" && Number(b) < start)) return "bad";
  return [start, end];
}

/** Streams bytes [start, end] of an open file, closing it at the end or on cancel. */
function fileSlice(file: Deno.FsFile, start: number, end: number): ReadableStream<Uint8Array> {
  let left = end - start + 1;
  let sought = false;
  return new ReadableStream<Uint8Array>({
    async pull(ctl) {
      try {
        if (!sought) {
          await file.seek(start, Deno.SeekMode.Start);
          sought = true;
        }
        if (left <= 0) {
          file.close();
          ctl.close();
          return;
        }
        const buf = new Uint8Array(Math.min(left, 1 << 20));
        const n = await file.read(buf);
        if (n === null) throw new Error("file shorter than its size");
        left -= n;
        ctl.enqueue(buf.subarray(0, n));
      } catch (e) {
        try {
          file.close();
        } catch { /* already closed */ }
        ctl.error(e);
      }
    },
    cancel() {
      try {
        file.close();
      } catch { /* already closed */ }
    },
  });
}

/** Answers GET/HEAD /model/<name> (the name already URL-decoded). */
export async function serveModelFile(
  dir: string,
  name: string,
  req: Request,
): Promise<Response> {
  const entry = (await listFiles(dir)).find((f) => f.name === name);
  if (!entry) throw new ApiError(404, `no file "${name}" in the model folder`, null, "not_found");
  const size = entry.size;
  const range = parseRange(req.headers.get("range"), size);
  const base = {
    "accept-ranges": "bytes",
    "content-type": contentType(name),
  };
  if (range === "bad") {
    throw new ApiError(
      416,
      `range "${req.headers.get("range")}" cannot be satisfied: the file is ${size} bytes`,
      "range",
      "range_not_satisfiable",
      undefined,
      { "content-range": `bytes */${size}`, "accept-ranges": "bytes" },
    );
  }
  const [start, end] = range ?? [0, size - 1];
  const length = Math.max(0, end - start + 1);
  const headers: Record<string, string> = { ...base, "content-length": String(length) };
  if (range) headers["content-range"] = `bytes ${start}-${end}/${size}`;
  const status = range ? 206 : 200;
  if (req.method === "HEAD" || length === 0) return new Response(null, { status, headers });
  const file = await Deno.open(`${dir}/${name}`, { read: true });
  return new Response(fileSlice(file, start, end), { status, headers });
}

function contentType(name: string): string {
  if (name.endsWith(".json")) return "application/json";
  if (name.endsWith(".md") || name.endsWith(".txt")) return "text/plain; charset=utf-8";
  return "application/octet-stream";
}
