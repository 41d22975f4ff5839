// Host bytes of the large arrays the stages hold (activation streams, a weight matrix on its way
// to the GPU, the embedding table, a unit being written), counted where they are taken and
// dropped. Its peak is what the memory plan's host column predicts. It is not the process RSS:
// the runtime, the GPU driver (llvmpipe keeps "GPU" buffers in host memory) and garbage not yet
// collected come on top of it.
export class HostMeter {
  live = 0;
  peak = 0;

  hold(bytes: number): void {
    this.live += bytes;
    if (this.live > this.peak) this.peak = this.live;
  }

  drop(bytes: number): void {
    this.live -= bytes;
  }

  /** Holds `bytes` while `fn` runs. */
  async during<T>(bytes: number, fn: () => Promise<T>): Promise<T> {
    this.hold(bytes);
    try {
      return await fn();
    } finally {
      this.drop(bytes);
    }
  }
}

/** The process's meter. */
export const hostMeter = new HostMeter();
