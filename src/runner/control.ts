// When an unattended run stops early: on SIGINT/SIGTERM (at the next unit boundary; a second
// signal exits at once) or when the time budget would be exceeded by the next unit.
// Exit codes are documented in the README.

/** Finished; also what a rerun of a finished job returns. */
export const EXIT_OK = 0;
/** Not finished, every completed unit kept: run the same command again (EX_TEMPFAIL). */
export const EXIT_RESUME = 75;
/** Stopped by SIGINT or SIGTERM, every completed unit kept. */
export const EXIT_INTERRUPTED = 130;

export class StopRun extends Error {
  constructor(readonly code: number, message: string) {
    super(message);
    this.name = "StopRun";
  }
}

export class RunControl {
  private readonly start = performance.now();
  private signal: string | null = null;
  private longestUnit = 0;
  private unitStart = performance.now();
  private readonly listeners: [Deno.Signal, () => void][] = [];

  constructor(readonly budgetMs: number | null) {
    for (const sig of ["SIGINT", "SIGTERM"] as const) {
      const fn = () => {
        if (this.signal) Deno.exit(EXIT_INTERRUPTED); // second signal: abandon the unit now
        this.signal = sig;
        console.error(`${sig}: stopping after the current unit (send again to stop now)`);
      };
      try {
        Deno.addSignalListener(sig, fn);
        this.listeners.push([sig, fn]);
      } catch {
        // Signals are not available on this platform.
      }
    }
  }

  /** Marks a unit boundary; throws StopRun when the run must stop before the next unit. */
  checkpoint(): void {
    const now = performance.now();
    this.longestUnit = Math.max(this.longestUnit, now - this.unitStart);
    this.unitStart = now;
    if (this.signal) {
      throw new StopRun(EXIT_INTERRUPTED, `stopped by ${this.signal}; completed units are kept`);
    }
    if (this.budgetMs !== null && now - this.start + this.longestUnit > this.budgetMs) {
      throw new StopRun(
        EXIT_RESUME,
        "time budget reached; completed units are kept: run the same command again to continue",
      );
    }
  }

  close(): void {
    for (const [sig, fn] of this.listeners) Deno.removeSignalListener(sig, fn);
  }
}

/** "90s", "30m", "2h", "1h30m" or plain seconds, in milliseconds. */
export function parseDuration(text: string): number | null {
  const s = text.trim();
  if (/^\d+(\.\d+)?$/.test(s)) return Number(s) * 1000;
  const re = /(\d+(?:\.\d+)?)(h|m|s)/g;
  let total = 0, used = 0;
  for (const m of s.matchAll(re)) {
    total += Number(m[1]) * { h: 3600, m: 60, s: 1 }[m[2] as "h" | "m" | "s"] * 1000;
    used += m[0].length;
  }
  return used === s.length && used > 0 ? total : null;
}
