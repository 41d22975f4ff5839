// Flag parsing shared by the commands: node:util parseArgs plus checked numeric conversions.
import { parseArgs } from "node:util";
import { UserError } from "../errors.ts";
import { parseDuration } from "../runner/control.ts";

export type FlagSpec = Record<
  string,
  { type: "string" | "boolean"; short?: string; multiple?: boolean }
>;

/** Parses argv strictly; unknown flags and stray positionals are user errors. */
export function parseFlags<T extends FlagSpec>(
  command: string,
  argv: string[],
  spec: T,
  positionals = 0,
): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  try {
    const r = parseArgs({ args: argv, options: spec, strict: true, allowPositionals: true });
    if (r.positionals.length > positionals) {
      throw new UserError(`${command}: unexpected argument "${r.positionals[positionals]}"`);
    }
    return {
      values: r.values as Record<string, string | boolean | undefined>,
      positionals: r.positionals,
    };
  } catch (e) {
    if (e instanceof UserError) throw e;
    const msg = (e as Error).message.split("\n")[0];
    throw new UserError(`${command}: ${msg}`);
  }
}

/** A required string flag. */
export function requireString(command: string, v: unknown, flag: string): string {
  if (typeof v !== "string" || v === "") throw new UserError(`${command}: --${flag} is required`);
  return v;
}

/** An integer flag >= min, or the default when absent. */
export function intFlag(
  command: string,
  v: unknown,
  flag: string,
  min: number,
  def?: number,
): number {
  if (v === undefined) {
    if (def === undefined) throw new UserError(`${command}: --${flag} is required`);
    return def;
  }
  const s = String(v);
  if (!/^[+]?\d+$/.test(s.trim())) {
    throw new UserError(`${command}: --${flag} must be an integer >= ${min} (got "${s}")`);
  }
  const n = Number(s);
  if (!Number.isSafeInteger(n) || n < min) {
    throw new UserError(`${command}: --${flag} must be an integer >= ${min} (got "${s}")`);
  }
  return n;
}

/** A finite number flag > 0 (or >= min when given), or the default when absent. */
export function numberFlag(
  command: string,
  v: unknown,
  flag: string,
  opts: { min?: number; exclusiveMin?: number; def?: number },
): number {
  if (v === undefined) {
    if (opts.def === undefined) throw new UserError(`${command}: --${flag} is required`);
    return opts.def;
  }
  const s = String(v);
  const n = Number(s);
  const bad = s.trim() === "" || !Number.isFinite(n) ||
    (opts.min !== undefined && n < opts.min) ||
    (opts.exclusiveMin !== undefined && n <= opts.exclusiveMin);
  if (bad) {
    const bound = opts.exclusiveMin !== undefined ? `> ${opts.exclusiveMin}` : `>= ${opts.min}`;
    throw new UserError(`${command}: --${flag} must be a number ${bound} (got "${s}")`);
  }
  return n;
}

/** Sizes like 48GB, 512MiB, 2e9 in bytes. */
export function bytesFlag(command: string, v: unknown, flag: string, def?: number): number {
  if (v === undefined) {
    if (def === undefined) throw new UserError(`${command}: --${flag} is required`);
    return def;
  }
  const m = /^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([KMGT]i?B?|B)?\s*$/i.exec(String(v));
  if (!m) throw new UserError(`${command}: --${flag} must be a size like 48GB (got "${v}")`);
  const unit = (m[2] ?? "B").toUpperCase().replace(/B$/, "");
  const pow = { "": 0, K: 1, M: 2, G: 3, T: 4 }[unit.replace("I", "")] ?? 0;
  const base = unit.includes("I") ? 1024 : 1000;
  const n = Number(m[1]) * base ** pow;
  if (!(n > 0)) throw new UserError(`${command}: --${flag} must be positive (got "${v}")`);
  return Math.floor(n);
}

/** --time-budget: a duration like 90s, 30m, 2h or 1h30m in milliseconds, or null when absent. */
export function durationFlag(command: string, v: unknown, flag: string): number | null {
  if (v === undefined) return null;
  const ms = parseDuration(String(v));
  if (ms === null || !(ms > 0)) {
    throw new UserError(
      `${command}: --${flag} must be a duration like 90s, 30m or 2h (got "${v}")`,
    );
  }
  return ms;
}
