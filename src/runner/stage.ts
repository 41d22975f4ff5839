// The stage runner: what every stage shares. A stage declares its units (a name, the file it
// keeps, the schema of its small facts, and how to compute it); the runner resumes the units the
// work directory already holds (file checksum and facts valid), passes a checkpoint (signals,
// time budget) before each unit it runs, keeps the result atomically, reports progress, and
// prunes units no resume needs any more. The work directory itself owns the lock and the
// manifest; RunControl owns signals and the time budget.
import type { z } from "zod";
import type { Gpu } from "../gpu/device.ts";
import { hostMeter } from "../util/hostmeter.ts";
import type { UnitRecord, WorkDir } from "../io/workdir.ts";
import type { Progress } from "../util/progress.ts";
import { RunControl } from "./control.ts";

/** What a unit keeps: its file's bytes and its small facts (kept in the manifest). */
export interface UnitOutput<I> {
  data: Uint8Array;
  info: I;
  /** Extra progress fields for the finished unit (e.g. its loss). */
  fields?: Record<string, string | number>;
}

export interface Unit<I> {
  /** "stage/part", e.g. "cluster/block-003". */
  name: string;
  /** Its file, relative to the work directory. */
  file: string;
  /** The facts kept with it; a record whose facts do not match counts as not done. */
  info: z.ZodType<I>;
  /** Extra progress fields (e.g. the block). */
  fields?: Record<string, string | number>;
  run: () => Promise<UnitOutput<I>>;
  /** Called when the unit was found done (instead of run). */
  resumed?: () => void;
  /** Called after the unit was kept or resumed and its progress reported (e.g. to prune). */
  after?: () => Promise<void>;
}

export interface UnitResult<I> {
  name: string;
  info: I;
  resumed: boolean;
}

export class StageRunner {
  /** Peak GPU bytes and host-meter bytes per stage entered (see enter). */
  readonly gpuPeak: Record<string, number> = {};
  readonly hostPeak: Record<string, number> = {};
  private current: { stage: string; gpu: Gpu | null } | null = null;

  constructor(
    readonly work: WorkDir,
    readonly progress: Progress,
    readonly control: RunControl = new RunControl(null),
  ) {}

  /**
   * Starts measuring a stage's peaks (ending the previous stage's): the counters restart from
   * what is live now. `null` ends the last stage.
   */
  enter(stage: string | null, gpu: Gpu | null = null): void {
    const c = this.current;
    if (c) {
      if (c.gpu) this.gpuPeak[c.stage] = Math.max(this.gpuPeak[c.stage] ?? 0, c.gpu.bytesPeak);
      this.hostPeak[c.stage] = Math.max(this.hostPeak[c.stage] ?? 0, hostMeter.peak);
    }
    this.current = stage === null ? null : { stage, gpu };
    if (gpu) gpu.bytesPeak = gpu.bytesLive;
    hostMeter.peak = hostMeter.live;
  }

  /** A unit boundary: throws StopRun when a signal came or the time budget would be exceeded. */
  checkpoint(): void {
    this.control.checkpoint();
  }

  /** A finished unit's record with its facts checked, or null (not done, corrupt, stale facts). */
  async done<I>(unit: string, info: z.ZodType<I>): Promise<(UnitRecord & { info: I }) | null> {
    return await this.work.done(unit, info) as (UnitRecord & { info: I }) | null;
  }

  /** A finished unit's bytes (verified against its checksum). */
  async read(unit: string): Promise<Uint8Array> {
    return await this.work.read(unit);
  }

  /** A finished unit's facts and bytes, or null. */
  async load<I>(unit: string, info: z.ZodType<I>): Promise<{ info: I; data: Uint8Array } | null> {
    const r = await this.done(unit, info);
    return r ? { info: r.info, data: await this.work.read(unit) } : null;
  }

  /** Keeps a unit: its file atomically, then its record. */
  async keep<I>(unit: string, file: string, out: UnitOutput<I>): Promise<void> {
    await this.work.complete(unit, file, out.data, out.info as Record<string, unknown>);
  }

  /** Drops the units `drop` selects (files first, then records). */
  async prune(drop: (unit: string) => boolean): Promise<void> {
    await this.work.remove(Object.keys(this.work.units()).filter(drop));
  }

  /**
   * Runs one unit: resumed when done, else checkpoint, compute, keep. `total` and `index` place
   * it in its stage's progress.
   */
  async unit<I>(stage: string, u: Unit<I>, index = 0, total = 1): Promise<UnitResult<I>> {
    const done = await this.done(u.name, u.info);
    let result: UnitResult<I>;
    if (done) {
      u.resumed?.();
      this.progress.update({ stage, done: index + 1, total, ...u.fields, resumed: "yes" });
      result = { name: u.name, info: done.info, resumed: true };
    } else {
      this.checkpoint();
      const out = await u.run();
      await this.keep(u.name, u.file, out);
      this.progress.update({ stage, done: index + 1, total, ...u.fields, ...out.fields });
      result = { name: u.name, info: out.info, resumed: false };
    }
    await u.after?.();
    return result;
  }

  /** Runs a stage's units in order (see unit). */
  async stage<I>(stage: string, units: Unit<I>[]): Promise<UnitResult<I>[]> {
    const results: UnitResult<I>[] = [];
    for (let i = 0; i < units.length; i++) {
      results.push(await this.unit(stage, units[i], i, units.length));
    }
    return results;
  }
}
