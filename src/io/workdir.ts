// The work directory: a msgpack manifest (settings, per-file input hashes, per-unit done markers
// with sha256), one file per unit written atomically, and an OS file lock on `lock` (which also
// holds the pid and host of its owner, for the error message only).
import { decode, encode } from "@msgpack/msgpack";
import { existsSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { z } from "zod";
import { UserError } from "../errors.ts";
import { writeFileAtomic } from "./atomic.ts";
import { sha256 } from "./hash.ts";

const Sha256 = z.string().regex(/^[0-9a-f]{64}$/);

const UnitRecordSchema = z.object({
  file: z.string().min(1).refine(
    (f) => !f.startsWith("/") && !f.split("/").includes(".."),
    "must be a path inside the work directory",
  ),
  sha256: Sha256,
  bytes: z.number().int().nonnegative(),
  // msgpack writes an absent `info` as nil.
  info: z.record(z.string(), z.unknown()).nullish().transform((v) => v ?? undefined),
});

const ManifestSchema = z.object({
  version: z.literal(2),
  stages: z.record(z.string(), z.unknown()),
  inputs: z.record(z.string(), Sha256),
  units: z.record(z.string(), UnitRecordSchema),
});

export interface UnitRecord {
  file: string;
  sha256: string;
  bytes: number;
  /** Small per-unit facts (losses, objective, ...), kept for the report. */
  info?: Record<string, unknown>;
}

export interface Manifest {
  version: 2;
  /** Settings per stage, in stage order. */
  stages: Record<string, unknown>;
  /** SHA-256 of each input file (name -> hash). */
  inputs: Record<string, string>;
  units: Record<string, UnitRecord>;
}

const MANIFEST = "manifest.msgpack";
const LOCK = "lock";

/** Reads and validates a manifest; a bad one is one UserError line naming the file. */
async function readManifest(
  path: string,
  firstStage: string,
  restart: string | undefined,
): Promise<Manifest | null> {
  const corrupt = (why: string) =>
    new UserError(
      `${path}: manifest is corrupt (${why}); delete the work directory to start over`,
    );
  let raw: unknown;
  try {
    raw = decode(await Deno.readFile(path));
  } catch (e) {
    throw corrupt(`not msgpack: ${(e as Error).message.split("\n")[0]}`);
  }
  const version = (raw as { version?: unknown } | null)?.version;
  if (version === 1) {
    // Version 1 hashed only the first MiB of each weights file: its inputs cannot be trusted.
    if (restart !== undefined) return null;
    throw new UserError(
      `${path}: made by an older cluscomp that did not hash whole input files; use --restart ${firstStage} or another --work`,
    );
  }
  const parsed = ManifestSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw corrupt(`${issue.path.join(".") || "top level"}: ${issue.message}`);
  }
  return parsed.data;
}

/** Names of the input files that differ (changed, added or removed) between two hash maps. */
function changedInputs(old: Record<string, string>, now: Record<string, string>): string[] {
  const names = new Set([...Object.keys(old), ...Object.keys(now)]);
  return [...names].filter((n) => old[n] !== now[n]).sort();
}

export class WorkDir {
  /** Units whose file was checked against its sha256 in this session (unit -> sha256). */
  private verified = new Map<string, string>();
  /** The bytes of the last unit `done` verified, handed to the next `read` of that unit. */
  private last: { unit: string; data: Uint8Array } | null = null;

  private constructor(
    readonly dir: string,
    private manifest: Manifest,
    private lock: Deno.FsFile | null,
  ) {}

  /**
   * Opens (or creates) a work directory for these per-stage settings (in stage order) and the
   * inputs' per-file hashes. A stage whose settings changed is refused unless `restart` names it
   * or an earlier stage; `restart` drops the units of that stage and every later one. Changed
   * inputs are refused (naming the files) unless `restart` is given; then every unit is dropped.
   */
  static async open(
    dir: string,
    stages: Record<string, unknown>,
    inputs: Record<string, string>,
    restart?: string,
  ): Promise<WorkDir> {
    const order = Object.keys(stages);
    if (restart !== undefined && !order.includes(restart)) {
      throw new UserError(`--restart: unknown stage "${restart}" (stages: ${order.join(", ")})`);
    }
    try {
      await Deno.mkdir(dir, { recursive: true });
    } catch (e) {
      throw new UserError(`Cannot create work directory ${dir}: ${(e as Error).message}`);
    }
    const lock = await acquireLock(dir);
    const path = join(dir, MANIFEST);
    try {
      let units: Record<string, UnitRecord> = {};
      const old = existsSync(path) ? await readManifest(path, order[0], restart) : null;
      if (old) {
        let from = restart === undefined ? order.length : order.indexOf(restart);
        const changed = changedInputs(old.inputs, inputs);
        if (changed.length > 0) {
          if (restart === undefined) {
            throw new UserError(
              `${dir}: input file${changed.length > 1 ? "s" : ""} ${
                changed.join(", ")
              } changed since this work directory was made; use --restart ${
                order[0]
              } to recompute from the start, or another --work`,
            );
          }
          from = 0;
        }
        for (let i = 0; i < from; i++) {
          const st = order[i];
          if (JSON.stringify(old.stages[st]) !== JSON.stringify(stages[st])) {
            throw new UserError(
              `${dir}: the ${st} settings changed since this work directory was made; use --restart ${st} to recompute from there, or another --work`,
            );
          }
        }
        const dropped = new Set(order.slice(from));
        for (const [k, v] of Object.entries(old.units)) {
          if (!dropped.has(k.split("/")[0])) units[k] = v;
        }
        if (changed.length > 0) units = {};
      }
      const wd = new WorkDir(dir, { version: 2, stages, inputs, units }, lock);
      await wd.save();
      return wd;
    } catch (e) {
      releaseLock(lock);
      throw e;
    }
  }

  get stages(): Record<string, unknown> {
    return this.manifest.stages;
  }

  /**
   * The record of a complete unit whose file still has its checksum, else null. With `info`, the
   * record's info must also match that schema (else the unit counts as not done).
   */
  async done(unit: string): Promise<UnitRecord | null>;
  async done<T>(
    unit: string,
    info: z.ZodType<T>,
  ): Promise<(Omit<UnitRecord, "info"> & { info: T }) | null>;
  async done<T>(unit: string, info?: z.ZodType<T>): Promise<UnitRecord | null> {
    const r = this.manifest.units[unit];
    if (!r) return null;
    let parsedInfo: T | undefined;
    if (info) {
      const p = info.safeParse(r.info);
      if (!p.success) return null;
      parsedInfo = p.data;
    }
    const data = await this.readChecked(unit, r);
    if (!data) return null;
    this.last = { unit, data };
    return info ? { ...r, info: parsedInfo as Record<string, unknown> } : r;
  }

  /** A complete unit's record and bytes (read and checked once), or null when not done. */
  async load(unit: string): Promise<{ record: UnitRecord; data: Uint8Array } | null> {
    const r = this.manifest.units[unit];
    if (!r) return null;
    const data = await this.readChecked(unit, r);
    return data ? { record: r, data } : null;
  }

  /** Units marked done (without checking files). */
  units(): Record<string, UnitRecord> {
    return this.manifest.units;
  }

  path(file: string): string {
    return join(this.dir, file);
  }

  /** Writes a unit's file atomically, then marks it done in the manifest. */
  async complete(
    unit: string,
    file: string,
    data: Uint8Array,
    info?: Record<string, unknown>,
  ): Promise<void> {
    const path = join(this.dir, file);
    await Deno.mkdir(join(path, ".."), { recursive: true });
    await writeFileAtomic(path, data);
    const hash = await sha256(data);
    this.manifest.units[unit] = { file, sha256: hash, bytes: data.length, info };
    this.verified.set(unit, hash);
    if (this.last?.unit === unit) this.last = null;
    await this.save();
  }

  /**
   * Removes units: their files first, then their records (one manifest write), so a run killed
   * in between leaves records whose files are gone (not done; removed again next time), never
   * files that no record names. Unknown units are ignored.
   */
  async remove(units: string[]): Promise<void> {
    const known = units.filter((u) => this.manifest.units[u]);
    if (known.length === 0) return;
    for (const unit of known) {
      try {
        await Deno.remove(join(this.dir, this.manifest.units[unit].file));
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
    }
    for (const unit of known) {
      delete this.manifest.units[unit];
      this.verified.delete(unit);
      if (this.last?.unit === unit) this.last = null;
    }
    await this.save();
  }

  /**
   * Reads a unit's file, verified against its checksum. The bytes of a unit `done` just checked
   * are handed over without reading again; a unit checked earlier in this session is read but
   * not hashed again (the lock keeps other writers out).
   */
  async read(unit: string): Promise<Uint8Array> {
    const r = this.manifest.units[unit];
    if (!r) throw new Error(`unit ${unit} is not complete`);
    if (this.last?.unit === unit) {
      const data = this.last.data;
      this.last = null;
      return data;
    }
    const data = await this.readChecked(unit, r);
    if (!data) throw new Error(`${r.file}: checksum mismatch`);
    return data;
  }

  /** The unit's bytes if its file exists and matches its record, else null. */
  private async readChecked(unit: string, r: UnitRecord): Promise<Uint8Array | null> {
    const path = join(this.dir, r.file);
    let data: Uint8Array;
    try {
      data = await Deno.readFile(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return null;
      throw e;
    }
    if (data.length !== r.bytes) return null;
    if (this.verified.get(unit) === r.sha256) return data;
    if ((await sha256(data)) !== r.sha256) return null;
    this.verified.set(unit, r.sha256);
    return data;
  }

  private async save(): Promise<void> {
    await writeFileAtomic(join(this.dir, MANIFEST), encode(this.manifest));
  }

  async close(): Promise<void> {
    this.last = null;
    if (this.lock) {
      releaseLock(this.lock);
      this.lock = null;
    }
    await Promise.resolve();
  }
}

const LockInfo = z.object({ pid: z.number(), host: z.string() });

/**
 * Takes an exclusive OS lock (flock) on `DIR/lock`, held until `close` or until the process ends,
 * when the kernel releases it, so a killed run never leaves a lock behind. The pid and host
 * written into the file only name the owner in the error of a refused run.
 */
async function acquireLock(dir: string): Promise<Deno.FsFile> {
  const path = join(dir, LOCK);
  const f = await Deno.open(path, { read: true, write: true, create: true });
  try {
    if (!(await f.tryLock(true))) {
      let who = "another process";
      try {
        const held = LockInfo.safeParse(JSON.parse(await Deno.readTextFile(path)));
        if (held.success) who = `process ${held.data.pid} on ${held.data.host}`;
      } catch {
        // being written, or empty: the owner is unknown
      }
      throw new UserError(`${dir} is in use by ${who}; wait for it to finish`);
    }
    const me = JSON.stringify({
      pid: Deno.pid,
      host: hostname(),
      started: new Date().toISOString(),
    });
    await f.truncate(0);
    const bytes = new TextEncoder().encode(me);
    let off = 0;
    while (off < bytes.length) off += await f.write(bytes.subarray(off));
    return f;
  } catch (e) {
    f.close();
    throw e;
  }
}

function releaseLock(f: Deno.FsFile): void {
  // The file stays: removing it would let a run waiting on the old inode and a new run on a new
  // file both hold "the" lock. Closing releases the lock.
  try {
    f.truncateSync(0);
  } catch {
    // only tidiness
  }
  f.close();
}
