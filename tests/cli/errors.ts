// The one check every bad-input test of a command makes.
import assert from "node:assert/strict";

/**
 * A refused run: non-zero exit, exactly one `error:` line on stderr (Mesa's warnings aside) that
 * names each needle, no stack trace, and (when stdout is given) nothing on stdout.
 */
export function assertOneErrorLine(
  r: { code: number; stderr: string; stdout?: string },
  ...needles: string[]
): void {
  assert.notEqual(r.code, 0, "exit code must be non-zero");
  const lines = r.stderr.trim().split("\n").filter((l) => !l.includes("MESA") && l.trim());
  assert.equal(lines.length, 1, `expected one error line, got:\n${r.stderr}`);
  assert.match(lines[0], /^error: /);
  assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
  if (r.stdout !== undefined) assert.equal(r.stdout.trim(), "", "nothing on stdout");
  for (const n of needles) assert.ok(lines[0].includes(n), `"${lines[0]}" should name ${n}`);
}
