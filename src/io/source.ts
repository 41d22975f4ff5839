// Where a model folder's files come from: a folder on disk (Deno) or a server over HTTP (fetch
// with Range requests, in a browser page). The readers (safetensors, config, tokenizer,
// quantization config) take a FileSource, so the model runs unchanged wherever its files are.
import { join } from "node:path";
import { UserError } from "../errors.ts";

export interface FileSource {
  /** How errors name the folder: a path or a URL. */
  readonly label: string;
  /** How errors name one file of it. */
  path(name: string): string;
  /** File names at the top level of the folder. */
  list(): Promise<string[]>;
  /** Byte size of a file, or null when it does not exist. */
  size(name: string): Promise<number | null>;
  /** `length` bytes from `offset` (all of them, or a UserError naming the file). */
  read(name: string, offset: number, length: number): Promise<Uint8Array>;
  /** The whole file as UTF-8 text, or null when it does not exist. */
  text(name: string): Promise<string | null>;
  /** Releases open handles; later reads reopen them. */
  close(): void;
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, " ");
}

/** A folder on disk (Deno). Reads of one file are queued: seek + read share one handle. */
export class DirSource implements FileSource {
  private handles = new Map<string, Deno.FsFile>();
  private locks = new Map<string, Promise<void>>();

  constructor(readonly label: string) {}

  path(name: string): string {
    return join(this.label, name);
  }

  async list(): Promise<string[]> {
    const names: string[] = [];
    for await (const e of Deno.readDir(this.label)) if (e.isFile) names.push(e.name);
    return names.sort();
  }

  async size(name: string): Promise<number | null> {
    try {
      const st = await Deno.stat(this.path(name));
      return st.isFile ? st.size : null;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return null;
      throw new UserError(`Cannot read ${this.path(name)}: ${oneLine((e as Error).message)}`);
    }
  }

  async text(name: string): Promise<string | null> {
    try {
      return await Deno.readTextFile(this.path(name));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return null;
      throw new UserError(`Cannot read ${this.path(name)}: ${oneLine((e as Error).message)}`);
    }
  }

  async read(name: string, offset: number, length: number): Promise<Uint8Array> {
    const file = this.path(name);
    const prev = this.locks.get(file) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    this.locks.set(file, mine);
    await prev;
    try {
      let f = this.handles.get(file);
      if (!f) {
        try {
          f = await Deno.open(file, { read: true });
        } catch (e) {
          throw new UserError(`Cannot read ${file}: ${oneLine((e as Error).message)}`);
        }
        this.handles.set(file, f);
      }
      await f.seek(offset, Deno.SeekMode.Start);
      const buf = new Uint8Array(length);
      let got = 0;
      while (got < length) {
        const n = await f.read(buf.subarray(got));
        if (n === null) throw new UserError(`Cannot read ${file}: unexpected end of file`);
        got += n;
      }
      return buf;
    } finally {
      if (this.locks.get(file) === mine) this.locks.delete(file);
      release();
    }
  }

  close(): void {
    for (const f of this.handles.values()) f.close();
    this.handles.clear();
  }
}

/** One entry of the server's file list (GET <base>/files). */
export interface RemoteFile {
  name: string;
  size: number;
}

/**
 * A folder served over HTTP: `GET <base>files` lists `[{name, size}]`, `GET <base><name>` serves
 * a file, with `Range: bytes=a-b` answered 206 and exactly those bytes.
 */
export class HttpSource implements FileSource {
  private files: Promise<Map<string, number>> | null = null;
  /** Bytes fetched so far (the page shows it). */
  bytesRead = 0;

  constructor(
    readonly label: string,
    // Called as a plain function: a browser's fetch throws when called as a method.
    private readonly fetcher: typeof fetch = (input, init) => fetch(input, init),
  ) {
    if (!label.endsWith("/")) this.label = label + "/";
  }

  path(name: string): string {
    return this.label + name;
  }

  private index(): Promise<Map<string, number>> {
    this.files ??= (async () => {
      const url = this.label + "files";
      const r = await this.get(url, {});
      let list: unknown;
      try {
        list = await r.json();
      } catch (e) {
        throw new UserError(`${url}: not valid JSON (${oneLine((e as Error).message)})`);
      }
      if (!Array.isArray(list)) throw new UserError(`${url}: not a JSON list of {name, size}`);
      const m = new Map<string, number>();
      for (const f of list) {
        const ok = typeof f?.name === "string" && Number.isSafeInteger(f?.size) && f.size >= 0;
        if (!ok) throw new UserError(`${url}: entry ${JSON.stringify(f)} is not {name, size}`);
        m.set(f.name, f.size);
      }
      return m;
    })();
    return this.files;
  }

  private async get(url: string, headers: Record<string, string>): Promise<Response> {
    let r: Response;
    try {
      r = await this.fetcher(url, { headers });
    } catch (e) {
      throw new UserError(`Cannot fetch ${url}: ${oneLine((e as Error).message)}`);
    }
    if (!r.ok) {
      await r.body?.cancel();
      throw new UserError(`Cannot fetch ${url}: HTTP ${r.status}`);
    }
    return r;
  }

  async list(): Promise<string[]> {
    return [...(await this.index()).keys()].sort();
  }

  async size(name: string): Promise<number | null> {
    return (await this.index()).get(name) ?? null;
  }

  async text(name: string): Promise<string | null> {
    if ((await this.size(name)) === null) return null;
    const r = await this.get(this.path(name), {});
    const t = await r.text();
    this.bytesRead += t.length;
    return t;
  }

  async read(name: string, offset: number, length: number): Promise<Uint8Array> {
    const url = this.path(name);
    const size = await this.size(name);
    if (size === null) throw new UserError(`Cannot fetch ${url}: not in the folder's file list`);
    if (offset + length > size) {
      throw new UserError(`Cannot read ${url}: bytes [${offset}, ${offset + length}) past ${size}`);
    }
    if (length === 0) return new Uint8Array(0);
    const r = await this.get(url, { Range: `bytes=${offset}-${offset + length - 1}` });
    const buf = new Uint8Array(await r.arrayBuffer());
    // A server that ignores Range answers 200 with the whole file.
    const bytes = r.status === 206 ? buf : buf.subarray(offset, offset + length);
    if (bytes.length !== length) {
      throw new UserError(
        `Cannot read ${url}: asked for ${length} bytes at ${offset}, got ${bytes.length}`,
      );
    }
    this.bytesRead += bytes.length;
    return bytes;
  }

  close(): void {}
}

/** A FileSource for a folder path, or the source itself. */
export function asSource(dir: string | FileSource): FileSource {
  return typeof dir === "string" ? new DirSource(dir) : dir;
}
