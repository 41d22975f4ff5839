// Activation streams of finetuning: one [hidden, seqlen] f32 array per calibration window, held
// either in host memory or, under a host-memory cap, as one file per window in a scratch folder
// of the work directory (read a window, run it, write the output). Both give back exactly the
// f32 values put in, so a streamed run computes the same bytes as an in-memory one.

import { hostMeter } from "../util/hostmeter.ts";

/** One activation stream: window i's [H, T] f32 values. */
export interface Acts {
  readonly length: number;
  get(i: number): Promise<Float32Array>;
  put(i: number, x: Float32Array): Promise<void>;
  /** Frees the stream (deletes its files). Idempotent. */
  release(): Promise<void>;
}

export class MemActs implements Acts {
  readonly xs: Float32Array[];
  constructor(readonly length: number) {
    this.xs = new Array(length);
  }
  get(i: number): Promise<Float32Array> {
    return Promise.resolve(this.xs[i]);
  }
  put(i: number, x: Float32Array): Promise<void> {
    hostMeter.drop(this.xs[i]?.byteLength ?? 0);
    hostMeter.hold(x.byteLength);
    this.xs[i] = x;
    return Promise.resolve();
  }
  release(): Promise<void> {
    for (const x of this.xs) hostMeter.drop(x?.byteLength ?? 0);
    this.xs.fill(undefined as unknown as Float32Array);
    return Promise.resolve();
  }
}

/** Counts of windows moved through disk streams (for tests and reports). */
export const streamStats = { written: 0, read: 0 };

export class DiskActs implements Acts {
  private constructor(readonly dir: string, readonly length: number) {}

  static async create(dir: string, length: number): Promise<DiskActs> {
    await removeScratch(dir);
    await Deno.mkdir(dir, { recursive: true });
    return new DiskActs(dir, length);
  }

  private file(i: number): string {
    return `${this.dir}/${String(i).padStart(5, "0")}.f32`;
  }

  async get(i: number): Promise<Float32Array> {
    const b = await Deno.readFile(this.file(i));
    streamStats.read++;
    return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  }

  async put(i: number, x: Float32Array): Promise<void> {
    await Deno.writeFile(this.file(i), new Uint8Array(x.buffer, x.byteOffset, x.byteLength));
    streamStats.written++;
  }

  release(): Promise<void> {
    return removeScratch(this.dir);
  }
}

/** Removes a scratch folder and everything in it, if present. */
export async function removeScratch(dir: string): Promise<void> {
  await Deno.remove(dir, { recursive: true }).catch((e) => {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  });
}
