// The work directory: a msgpack manifest (settings, input hash, per-unit done markers with
// sha256), one file per unit written atomically, and a lock holding the pid and host.
import { decode, encode } from "@msgpack/msgpack";
import { existsSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { UserError } from "../errors.ts";
import { writeFileAtomic } from "./atomic.ts";
import { sha256 } from "./hash.ts";

export interface UnitRecord {
  file: string;
  sha256: string;
  bytes: number;
  /** Small per-unit facts (losses, objective, ...), kept for the report. */
  info?: Record<string, unknown>;
}

export interface Manifest {
  version: 1;
  /** Settings per stage, in stage order. */
  stages: Record<string, unknown>;
  inputs: string;
  units: Record<string, UnitRecord>;
}

const MANIFEST = "manifest.msgpack";

export class WorkDir {
  private constructor(readonly dir: string, private manifest: Manifest, private locked: boolean) {}

  /**
   * Opens (or creates) a work directory for these per-stage settings (in stage order) and inputs.
   * A stage whose settings changed is refused unless `restart` names it or an earlier stage;
   * `restart` drops the units of that stage and every later one. Changed inputs need a restart.
   */
  static async open(
    dir: string,
    stages: Record<string, unknown>,
    inputs: string,
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
    await acquireLock(dir);
    const path = join(dir, MANIFEST);
    try {
      let units: Record<string, UnitRecord> = {};
      if (existsSync(path)) {
        let old: Manifest;
        try {
          old = decode(await Deno.readFile(path)) as Manifest;
          if (old.version !== 1 || typeof old.units !== "object") throw new Error("bad version");
        } catch {
          throw new UserError(
            `${path}: manifest is corrupt; delete the work directory to start over`,
          );
        }
        let from = restart === undefined ? order.length : order.indexOf(restart);
        if (old.inputs !== inputs) {
          if (restart === undefined) {
            throw new UserError(
              `${dir}: the input model changed since this work directory was made; use --restart ${
                order[0]
              } or another --work`,
            );
          }
          from = 0;
        }
        for (let i = 0; i < from; i++) {
          const st = order[i];
          if (JSON.stringify(old.stages?.[st]) !== JSON.stringify(stages[st])) {
            throw new UserError(
              `${dir}: the ${st} settings changed since this work directory was made; use --restart ${st} to recompute from there, or another --work`,
            );
          }
        }
        const dropped = new Set(order.slice(from));
        for (const [k, v] of Object.entries(old.units)) {
          if (!dropped.has(k.split("/")[0])) units[k] = v;
        }
        if (old.inputs !== inputs) units = {};
      }
      const wd = new WorkDir(dir, { version: 1, stages, inputs, units }, true);
      await wd.save();
      return wd;
    } catch (e) {
      await releaseLock(dir);
      throw e;
    }
  }

  get stages(): Record<string, unknown> {
    return this.manifest.stages;
  }

  /** The record of a complete unit whose file still has its checksum, else null. */
  async done(unit: string): Promise<UnitRecord | null> {
    const r = this.manifest.units[unit];
    if (!r) return null;
    const path = join(this.dir, r.file);
    if (!existsSync(path)) return null;
    const data = await Deno.readFile(path);
    if (data.length !== r.bytes || (await sha256(data)) !== r.sha256) return null;
    return r;
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
    this.manifest.units[unit] = { file, sha256: await sha256(data), bytes: data.length, info };
    await this.save();
  }

  /** Reads a unit's file, verified against its checksum. */
  async read(unit: string): Promise<Uint8Array> {
    const r = this.manifest.units[unit];
    if (!r) throw new Error(`unit ${unit} is not complete`);
    const data = await Deno.readFile(join(this.dir, r.file));
    if ((await sha256(data)) !== r.sha256) throw new Error(`${r.file}: checksum mismatch`);
    return data;
  }

  private async save(): Promise<void> {
    await writeFileAtomic(join(this.dir, MANIFEST), encode(this.manifest));
  }

  async close(): Promise<void> {
    if (this.locked) {
      this.locked = false;
      await releaseLock(this.dir);
    }
  }
}

function pidAlive(pid: number): boolean {
  return existsSync(`/proc/${pid}`);
}

async function acquireLock(dir: string): Promise<void> {
  const path = join(dir, "lock");
  const me = JSON.stringify({ pid: Deno.pid, host: hostname(), started: new Date().toISOString() });
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await Deno.writeTextFile(path, me, { createNew: true });
      return;
    } catch (e) {
      if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
    }
    let holder: { pid?: number; host?: string } = {};
    try {
      holder = JSON.parse(await Deno.readTextFile(path));
    } catch {
      // unreadable lock: treat as stale
    }
    const sameHost = holder.host === hostname();
    if (holder.pid && (!sameHost || pidAlive(holder.pid))) {
      throw new UserError(
        `${dir} is in use by process ${holder.pid} on ${holder.host}; wait for it or remove ${path}`,
      );
    }
    await Deno.remove(path).catch(() => {});
  }
  throw new UserError(`${dir}: could not take the lock`);
}

async function releaseLock(dir: string): Promise<void> {
  await Deno.remove(join(dir, "lock")).catch(() => {});
}
