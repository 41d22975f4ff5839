// The work directory: a msgpack manifest (settings, per-file input hashes, per-unit done markers
// with sha256), one file per unit written atomically, and an OS file lock on `lock` (which also
// holds the pid and host of its owner, for the error message only).
//
// Cluster shards (compress --stage cluster --shard I/N) share it with each other: each holds
// `lock` shared (a whole run holds it exclusive, so the two never overlap) and its own
// `shards/shard-I-of-N.lock` exclusive (a second attempt of the same shard waits for the first).
// A shard never writes the manifest: it writes each unit's file, then a fact file
// `pending/<unit>.msgpack` (the unit's record, the settings of its stage and those before, the
// input hashes). The next whole run adopts every pending unit whose settings and inputs match
// and whose file matches its checksum, into the manifest, then deletes the fact file.
import { decode, encode } from "@msgpack/msgpack";
import { existsSync } from "node:fs";
import { hostname } from "node:os";
import { dirname, join } from "node:path";
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
const PENDING = "pending";
const SHARDS = "shards";

/** What a shard writes beside each unit it finishes (adopted by the next whole run). */
const PendingSchema = z.object({
  version: z.literal(1),
  unit: z.string(),
  record: UnitRecordSchema,
  /** Settings of the unit's stage and every stage before it, in order. */
  settings: z.record(z.string(), z.unknown()),
  inputs: z.record(z.string(), Sha256),
});

/** One shard of a stage's units: `index` of `count` (0-based). */
export interface ShardId {
  index: number;
  count: number;
}

export interface OpenOptions {
  /**
   * The last stage this run runs (default: all). Later stages keep the settings and units the
   * manifest records; a stage not recorded yet is recorded by the first run that runs it.
   */
  last?: string;
  /** Open as this shard of the `last` stage: shared access, pending units, no manifest writes. */
  shard?: ShardId;
  /** Told once when the run waits for a lock another process holds. */
  onWait?: (message: string) => void;
}

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
  /** Units this open adopted from shards' fact files. */
  readonly adopted: string[] = [];

  private constructor(
    readonly dir: string,
    private manifest: Manifest,
    private lock: Deno.FsFile | null,
    /** Set when opened as a shard: its own lock, and the settings its fact files record. */
    private readonly shard: { id: ShardId; lock: Deno.FsFile } | null = null,
  ) {}

  /**
   * Opens (or creates) a work directory for these per-stage settings (in stage order) and the
   * inputs' per-file hashes. A stage whose settings changed is refused unless `restart` names it
   * or an earlier stage; `restart` drops the units of that stage and every later one. Changed
   * inputs are refused (naming the files) unless `restart` is given; then every unit is dropped.
   * Units that shards left pending are adopted when their settings, inputs and checksum match.
   */
  static async open(
    dir: string,
    stages: Record<string, unknown>,
    inputs: Record<string, string>,
    restart?: string,
    opts: OpenOptions = {},
  ): Promise<WorkDir> {
    const order = Object.keys(stages);
    if (restart !== undefined && !order.includes(restart)) {
      throw new UserError(`--restart: unknown stage "${restart}" (stages: ${order.join(", ")})`);
    }
    if (opts.last !== undefined && !order.includes(opts.last)) {
      throw new Error(`WorkDir.open: unknown last stage "${opts.last}"`);
    }
    try {
      await Deno.mkdir(dir, { recursive: true });
    } catch (e) {
      throw new UserError(`Cannot create work directory ${dir}: ${(e as Error).message}`);
    }
    const shard = opts.shard;
    const lock = shard ? await acquireShared(dir) : await acquireLock(dir);
    let shardLock: Deno.FsFile | null = null;
    try {
      if (shard) shardLock = await acquireShardLock(dir, shard, opts.onWait);
      const path = join(dir, MANIFEST);
      const old = existsSync(path) ? await readManifest(path, order[0], restart) : null;
      const kept = resolveUnits(dir, old, stages, inputs, restart, opts.last);
      const wd = new WorkDir(
        dir,
        { version: 2, stages: kept.stages, inputs, units: kept.units },
        lock,
        shard ? { id: shard, lock: shardLock! } : null,
      );
      const files = await wd.adoptPending();
      if (!shard) {
        await wd.save();
        // Adopted facts are in the manifest now; a run killed before this adopts them again.
        for (const f of files) await Deno.remove(f).catch(() => {});
      }
      return wd;
    } catch (e) {
      if (shardLock) releaseLock(shardLock, true);
      releaseLock(lock, !shard);
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

  /**
   * Writes a unit's file atomically, then marks it done in the manifest (as a shard: in its
   * fact file under pending/, for the next whole run to adopt).
   */
  async complete(
    unit: string,
    file: string,
    data: Uint8Array,
    info?: Record<string, unknown>,
  ): Promise<void> {
    const path = join(this.dir, file);
    await Deno.mkdir(join(path, ".."), { recursive: true });
    const hash = await sha256(data);
    const record: UnitRecord = { file, sha256: hash, bytes: data.length, info };
    if (this.shard) {
      // Names unique across hosts: pods on a shared volume may run with the same pid.
      await writeUnique(path, data);
      const settings = this.settingsUpTo(unit), inputs = this.manifest.inputs;
      await writeUnique(
        pendingPath(this.dir, unit),
        encode({ version: 1, unit, record, settings, inputs }),
      );
    } else {
      await writeFileAtomic(path, data);
    }
    this.manifest.units[unit] = record;
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
    if (this.shard) throw new Error("a shard does not remove units");
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

  /** The settings of a unit's stage and every stage before it, in order. */
  private settingsUpTo(unit: string): Record<string, unknown> {
    const stage = unit.split("/")[0];
    const out: Record<string, unknown> = {};
    for (const [st, v] of Object.entries(this.manifest.stages)) {
      out[st] = v;
      if (st === stage) return out;
    }
    throw new Error(`unit ${unit}: unknown stage ${stage}`);
  }

  /**
   * Adopts the units shards left under pending/ (see the file's header): a fact whose unit is
   * not dropped, whose settings up to its stage and inputs equal this run's, and whose file
   * matches its checksum replaces the unit's record. Returns the adopted fact files.
   */
  private async adoptPending(): Promise<string[]> {
    const adopted: string[] = [];
    for (const path of await listFiles(join(this.dir, PENDING))) {
      if (!path.endsWith(".msgpack")) continue;
      let fact: z.infer<typeof PendingSchema>;
      try {
        const p = PendingSchema.safeParse(decode(await Deno.readFile(path)));
        if (!p.success) continue;
        fact = p.data;
      } catch {
        continue; // unreadable: not adopted (its unit is computed again)
      }
      if (path !== pendingPath(this.dir, fact.unit)) continue;
      const stage = fact.unit.split("/")[0];
      if (!(stage in this.manifest.stages)) continue;
      let want: Record<string, unknown>;
      try {
        want = this.settingsUpTo(fact.unit);
      } catch {
        continue;
      }
      if (JSON.stringify(fact.settings) !== JSON.stringify(want)) continue;
      if (changedInputs(fact.inputs, this.manifest.inputs).length > 0) continue;
      const record = fact.record as UnitRecord;
      const known = this.manifest.units[fact.unit];
      if (known && known.sha256 === record.sha256 && known.bytes === record.bytes) {
        adopted.push(path); // already in the manifest
        continue;
      }
      // A whole run checks the file now (the fact may be older than the manifest's record); a
      // shard only reads the record in, and `done` checks the file when it is asked for.
      if (!this.shard && !(await this.readChecked(fact.unit, record))) continue;
      this.manifest.units[fact.unit] = record;
      this.adopted.push(fact.unit);
      adopted.push(path);
    }
    return adopted;
  }

  private async save(): Promise<void> {
    if (this.shard) return; // a shard's records live in its fact files
    await writeFileAtomic(join(this.dir, MANIFEST), encode(this.manifest));
  }

  async close(): Promise<void> {
    this.last = null;
    if (this.shard) releaseLock(this.shard.lock, true);
    if (this.lock) {
      releaseLock(this.lock, !this.shard);
      this.lock = null;
    }
    await Promise.resolve();
  }
}

/**
 * The settings and units a run keeps from the manifest `old` (see WorkDir.open). Stages after
 * `last` keep what the manifest records (settings and units), unless `restart` drops them.
 */
function resolveUnits(
  dir: string,
  old: Manifest | null,
  stages: Record<string, unknown>,
  inputs: Record<string, string>,
  restart: string | undefined,
  last: string | undefined,
): { stages: Record<string, unknown>; units: Record<string, UnitRecord> } {
  const order = Object.keys(stages);
  const lastIdx = last === undefined ? order.length - 1 : order.indexOf(last);
  const kept: Record<string, unknown> = {};
  for (let i = 0; i < order.length; i++) {
    const st = order[i];
    if (i <= lastIdx) kept[st] = stages[st];
    else if (old && st in old.stages) kept[st] = old.stages[st];
  }
  if (!old) return { stages: kept, units: {} };
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
  const unrecorded = new Set<string>();
  for (let i = 0; i < Math.min(from, lastIdx + 1); i++) {
    const st = order[i];
    // A stage the manifest does not record yet (the run that made it stopped before it).
    if (!(st in old.stages)) {
      unrecorded.add(st);
      continue;
    }
    if (JSON.stringify(old.stages[st]) !== JSON.stringify(stages[st])) {
      throw new UserError(
        `${dir}: the ${st} settings changed since this work directory was made; use --restart ${st} to recompute from there, or another --work`,
      );
    }
  }
  const dropped = new Set([...order.slice(from), ...unrecorded]);
  let units: Record<string, UnitRecord> = {};
  for (const [k, v] of Object.entries(old.units)) {
    const st = k.split("/")[0];
    if (!dropped.has(st) && (!order.includes(st) || st in kept)) units[k] = v;
  }
  if (changed.length > 0) units = {};
  return { stages: kept, units };
}

/** Where a shard keeps the fact file of a unit. */
function pendingPath(dir: string, unit: string): string {
  return join(dir, PENDING, `${unit}.msgpack`);
}

/** Every file under `dir` (recursively), sorted; none when it does not exist. */
async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      const p = join(dir, e.name);
      if (e.isDirectory) out.push(...await listFiles(p));
      else if (e.isFile) out.push(p);
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return out.sort();
}

/** writeFileAtomic into a folder that may not exist yet. */
async function writeUnique(path: string, data: Uint8Array): Promise<void> {
  await Deno.mkdir(dirname(path), { recursive: true });
  await writeFileAtomic(path, data);
}

const LockInfo = z.object({ pid: z.number(), host: z.string(), shard: z.string().optional() });

/** "process 12 on host" from a lock file's contents, or null when it names nobody. */
async function lockOwner(path: string): Promise<string | null> {
  try {
    const held = LockInfo.safeParse(JSON.parse(await Deno.readTextFile(path)));
    if (held.success) return `process ${held.data.pid} on ${held.data.host}`;
  } catch {
    // being written, or empty: the owner is unknown
  }
  return null;
}

/** Writes who holds a lock into its file (for the error message of a refused run only). */
async function writeOwner(f: Deno.FsFile, extra: Record<string, string> = {}): Promise<void> {
  const me = JSON.stringify({
    pid: Deno.pid,
    host: hostname(),
    started: new Date().toISOString(),
    ...extra,
  });
  await f.truncate(0);
  await f.seek(0, Deno.SeekMode.Start);
  const bytes = new TextEncoder().encode(me);
  let off = 0;
  while (off < bytes.length) off += await f.write(bytes.subarray(off));
}

/** The shards running now (their shard lock held by another process), for error messages. */
async function runningShards(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const path of await listFiles(join(dir, SHARDS))) {
    const m = /shard-(\d+)-of-(\d+)\.lock$/.exec(path);
    if (!m) continue;
    let f: Deno.FsFile;
    try {
      f = await Deno.open(path, { read: true, write: true });
    } catch {
      continue;
    }
    try {
      if (await f.tryLock(true)) continue; // free: not running
      const who = await lockOwner(path);
      out.push(`shard ${m[1]}/${m[2]}${who ? ` (${who})` : ""}`);
    } finally {
      f.close();
    }
  }
  return out;
}

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
      const shards = await runningShards(dir);
      if (shards.length > 0) {
        throw new UserError(
          `${dir} is in use by ${shards.join(", ")}; wait for the shards to finish`,
        );
      }
      const who = await lockOwner(path) ?? "another process";
      throw new UserError(`${dir} is in use by ${who}; wait for it to finish`);
    }
    await writeOwner(f);
    return f;
  } catch (e) {
    f.close();
    throw e;
  }
}

/**
 * A shard's hold on `DIR/lock`: shared, so shards run side by side, and refused while a whole
 * run holds it exclusive. Nothing is written into the file (it names the whole run's owner).
 */
async function acquireShared(dir: string): Promise<Deno.FsFile> {
  const path = join(dir, LOCK);
  const f = await Deno.open(path, { read: true, write: true, create: true });
  try {
    if (!(await f.tryLock(false))) {
      const who = await lockOwner(path) ?? "another process";
      throw new UserError(
        `${dir} is in use by ${who} (a run that is not a shard); wait for it to finish`,
      );
    }
    return f;
  } catch (e) {
    f.close();
    throw e;
  }
}

/**
 * A shard's own lock, `DIR/shards/shard-I-of-N.lock`, exclusive. A second attempt of the same
 * shard waits for the first to end (a scheduler may start a replacement while the old attempt
 * is still stopping), then resumes what it left: the two never write at once.
 */
async function acquireShardLock(
  dir: string,
  shard: ShardId,
  onWait?: (message: string) => void,
): Promise<Deno.FsFile> {
  const name = `${shard.index}/${shard.count}`;
  const path = join(dir, SHARDS, `shard-${shard.index}-of-${shard.count}.lock`);
  await Deno.mkdir(dirname(path), { recursive: true });
  const f = await Deno.open(path, { read: true, write: true, create: true });
  try {
    if (!(await f.tryLock(true))) {
      const who = await lockOwner(path) ?? "another process";
      onWait?.(`shard ${name} is being run by ${who}; waiting for it to finish`);
      await f.lock(true);
    }
    await writeOwner(f, { shard: name });
    return f;
  } catch (e) {
    f.close();
    throw e;
  }
}

/**
 * Runs `fn` holding an exclusive OS lock on the file `path` (created if needed), waiting for
 * another holder first (`onWait` is told once). For work done once and shared, such as the
 * --bits plan: the first process computes it, the others wait and then read it.
 */
export async function withFileLock<T>(
  path: string,
  fn: () => Promise<T>,
  onWait?: (message: string) => void,
): Promise<T> {
  let f: Deno.FsFile;
  try {
    await Deno.mkdir(dirname(path), { recursive: true });
    f = await Deno.open(path, { read: true, write: true, create: true });
  } catch (e) {
    throw new UserError(`Cannot create ${path}: ${(e as Error).message.split("\n")[0]}`);
  }
  try {
    if (!(await f.tryLock(true))) {
      const who = await lockOwner(path) ?? "another process";
      onWait?.(`${path} is held by ${who}; waiting for it`);
      await f.lock(true);
    }
    await writeOwner(f);
    try {
      return await fn();
    } finally {
      await f.truncate(0).catch(() => {});
    }
  } finally {
    f.close();
  }
}

function releaseLock(f: Deno.FsFile, tidy: boolean): void {
  // The file stays: removing it would let a run waiting on the old inode and a new run on a new
  // file both hold "the" lock. Closing releases the lock.
  if (tidy) {
    try {
      f.truncateSync(0);
    } catch {
      // only tidiness
    }
  }
  f.close();
}
