// Starts the real `deno task serve` (tasks/serve.ts) on a free port for a test, keeps its log
// lines, and stops it with SIGTERM (checking it exits 0).
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { compressedFolder } from "../model/compressed_folder.ts";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
export const KJV = `${ROOT}fixtures/kjv-llama`;

/** The compressed kjv-llama the serve tests share (made once per test process). */
export function compressedKjv(): Promise<string> {
  return compressedFolder(KJV);
}

export interface RunningServer {
  url: string;
  /** Parsed JSON log lines so far (stderr). */
  logs: Record<string, unknown>[];
  /** Sends SIGTERM (as a service manager would) without waiting. */
  terminate(): void;
  /** SIGTERM (unless sent already), then waits; asserts a clean exit. */
  stop(): Promise<void>;
}

export async function startServer(args: string[]): Promise<RunningServer> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}tasks/serve.ts`, "--port", "0", ...args],
    stdout: "null",
    stderr: "piped",
    env: { CLUSCOMP_API_KEY: "" },
  }).spawn();
  const logs: Record<string, unknown>[] = [];
  let raw = "";
  let listening!: (url: string) => void;
  let failed!: (e: Error) => void;
  const ready = new Promise<string>((res, rej) => {
    listening = res;
    failed = rej;
  });
  const reading = (async () => {
    const dec = new TextDecoder();
    let buf = "";
    for await (const chunk of child.stderr) {
      buf += dec.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        raw += line + "\n";
        if (!line.startsWith("{")) continue;
        const rec = JSON.parse(line);
        logs.push(rec);
        if (rec.event === "listening") listening(rec.url);
      }
    }
    failed(new Error(`serve exited before listening:\n${raw}`));
  })();
  const timer = setTimeout(
    () => failed(new Error(`serve did not listen in 120 s:\n${raw}`)),
    120_000,
  );
  let url: string;
  try {
    url = await ready;
  } catch (e) {
    child.kill("SIGKILL");
    await child.status;
    throw e;
  } finally {
    clearTimeout(timer);
  }
  let terminated = false;
  const terminate = () => {
    if (!terminated) child.kill("SIGTERM");
    terminated = true;
  };
  return {
    url,
    logs,
    terminate,
    async stop() {
      terminate();
      const status = await child.status;
      await reading;
      assert.equal(status.code, 0, `serve exit code ${status.code}:\n${raw}`);
      assert.ok(logs.some((r) => r.event === "stopped"), "serve logs its stop");
    },
  };
}

/** `deno task generate --json` on a folder: the reference text and ids. */
export async function generateJson(
  model: string,
  prompt: string,
  tokens: number,
  extra: string[] = [],
): Promise<{ text: string; ids: number[]; prompt_tokens: number; stop_reason: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      `${ROOT}tasks/generate.ts`,
      "--model",
      model,
      "--prompt",
      prompt,
      "--max-new-tokens",
      String(tokens),
      "--json",
      "--quiet",
      ...extra,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `generate failed: ${stderr}`);
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

/** A copy of a model folder with `chat_template` added to its tokenizer_config.json. */
export async function withChatTemplate(dir: string, template: string): Promise<string> {
  const out = await Deno.makeTempDir({ prefix: "cluscomp-serve-chat-" });
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile) await Deno.copyFile(`${dir}/${e.name}`, `${out}/${e.name}`);
  }
  const path = `${out}/tokenizer_config.json`;
  const cfg = JSON.parse(await Deno.readTextFile(path));
  cfg.chat_template = template;
  await Deno.writeTextFile(path, JSON.stringify(cfg, null, 2));
  return out;
}
