// Helpers to run the tasks as a user would: a subprocess, its exit code and output.
import assert from "node:assert/strict";
const ROOT = new URL("../../", import.meta.url).pathname;

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  /** The kill landed: SIGKILL was sent and the process died of it (not a normal exit first). */
  killed?: boolean;
  /** The signal that ended the process, if one did. */
  signal?: Deno.Signal | null;
}

/** SIGKILLs a child (if still running) and reports whether it died of that signal. */
export async function killLanded(child: Deno.ChildProcess): Promise<boolean> {
  let sent = true;
  try {
    child.kill("SIGKILL");
  } catch {
    sent = false; // already exited
  }
  const status = await child.status;
  return sent && status.signal === "SIGKILL";
}

export function compressArgs(model: string, out: string, extra: string[]): string[] {
  return ["--model", model, "--out", out, ...extra];
}

export async function runTask(task: string, args: string[]): Promise<RunResult> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}tasks/${task}.ts`, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/**
 * Runs a task and SIGKILLs it as soon as its stderr matches `pattern`. `killed` is true only when
 * the process then died of the signal (a run that finished first reads false).
 */
export async function runUntil(task: string, args: string[], pattern: RegExp): Promise<RunResult> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}tasks/${task}.ts`, ...args],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let stderr = "", sent = false;
  const dec = new TextDecoder();
  const stdoutDone = new Response(child.stdout).text();
  for await (const chunk of child.stderr) {
    stderr += dec.decode(chunk, { stream: true });
    if (!sent && pattern.test(stderr)) {
      try {
        child.kill("SIGKILL");
        sent = true;
      } catch { /* already exited: the kill did not land */ }
    }
  }
  const status = await child.status;
  return {
    code: status.code,
    stdout: await stdoutDone,
    stderr,
    killed: sent && status.signal === "SIGKILL",
    signal: status.signal,
  };
}

/** Every file under a folder (relative path -> bytes). */
export async function filesOf(dir: string, prefix = ""): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  for await (const e of Deno.readDir(`${dir}/${prefix}`)) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory) { for (const [k, v] of await filesOf(dir, rel)) out.set(k, v); }
    else out.set(rel, await Deno.readFile(`${dir}/${rel}`));
  }
  return out;
}

/** Two output folders hold the same files, byte for byte, except the reports (which hold timings). */
export async function assertSameOutputs(a: string, b: string): Promise<void> {
  const fa = await filesOf(a), fb = await filesOf(b);
  for (const f of ["report.json", "report.md"]) {
    fa.delete(f);
    fb.delete(f);
  }
  assert.deepEqual([...fa.keys()].sort(), [...fb.keys()].sort());
  for (const [name, bytes] of fa) assert.deepEqual(fb.get(name), bytes, `${name} differs`);
}
