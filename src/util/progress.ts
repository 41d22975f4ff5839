// Progress for long work: a live line on a terminal, JSON lines otherwise (both on stderr).

export interface ProgressEvent {
  stage: string;
  done: number;
  total: number;
  [key: string]: unknown;
}

export class Progress {
  private readonly tty: boolean;
  private readonly start = performance.now();
  private lastDraw = 0;
  private lastLog = 0;
  private lastKey = "";
  private enc = new TextEncoder();

  constructor(readonly quiet = false) {
    this.tty = Deno.stderr.isTerminal();
  }

  update(e: ProgressEvent): void {
    if (this.quiet) return;
    const now = performance.now();
    const final = e.done >= e.total;
    if (this.tty) {
      if (!final && now - this.lastDraw < 100) return;
      this.lastDraw = now;
      const elapsed = (now - this.start) / 1000;
      const eta = e.done > 0 ? (elapsed / e.done) * (e.total - e.done) : NaN;
      const extra = Object.entries(e)
        .filter(([k]) => !["stage", "done", "total"].includes(k))
        .map(([k, v]) => `${k} ${typeof v === "number" ? fmt(v) : v}`)
        .join("  ");
      const line = `${e.stage} ${e.done}/${e.total}  ${extra}  ${elapsed.toFixed(1)}s` +
        (Number.isFinite(eta) && !final ? `  eta ${eta.toFixed(0)}s` : "");
      Deno.stderr.writeSync(this.enc.encode(`\r\x1b[2K${line}${final ? "\n" : ""}`));
    } else {
      // Every unit boundary (a new `done` count) is logged; in between, one line per 2 s.
      const key = `${e.stage}:${e.done}/${e.total}`;
      if (!final && key === this.lastKey && now - this.lastLog < 2000) return;
      this.lastKey = key;
      this.lastLog = now;
      const rec = { t: new Date().toISOString(), ...e, elapsed_s: (now - this.start) / 1000 };
      Deno.stderr.writeSync(this.enc.encode(JSON.stringify(rec) + "\n"));
    }
  }

  /** A one-off message: a plain line on a terminal, a JSON line otherwise. */
  note(stage: string, message: string): void {
    if (this.quiet) return;
    const text = this.tty
      ? `${stage}: ${message}\n`
      : JSON.stringify({ t: new Date().toISOString(), stage, message }) + "\n";
    Deno.stderr.writeSync(this.enc.encode(text));
  }
}

function fmt(v: number): string {
  return Number.isInteger(v) ? String(v) : v.toPrecision(5);
}
