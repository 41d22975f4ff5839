// `cluscomp serve`: an OpenAI-compatible HTTP server for a dense or compressed model folder.
import { basename, resolve } from "node:path";
import { UserError } from "../errors.ts";
import { getGpu } from "../gpu/device.ts";
import { ChatTemplate } from "../serve/chat.ts";
import { Engine } from "../serve/engine.ts";
import { Server } from "../serve/server.ts";
import { bytesFlag, intFlag, parseFlags, requireString } from "./args.ts";

export const SERVE_HELP =
  `cluscomp serve: an OpenAI-compatible API (and the browser page) for one model

Usage: deno task serve --model DIR [options]

  --model DIR        Hugging Face Llama-family folder or a cluscomp compressed folder
  --host HOST        address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)
  --port N           port (default 8080; 0 = any free port, printed at start)
  --api-key KEY      require "Authorization: Bearer KEY" on /v1/ and /model/ (default: the
                     CLUSCOMP_API_KEY environment variable when set
                     and not empty, else none)
  --name NAME        the model id in answers and /v1/models (default: the folder's name)
  --queue N          requests that may wait while one generates (default 16); 503 past it
  --max-tokens N     largest max_tokens a request may ask (default: the context)
  --max-body SIZE    largest request body, e.g. 1MiB (default); 413 past it
  --context N        tokens the KV cache holds (default and most: max_position_embeddings)
  --quiet            no per-request log
  -h, --help         this text

Routes: POST /v1/completions, POST /v1/chat/completions (stream: true for server-sent events),
GET /v1/models, GET /health (never needs the key), GET /model/files and GET /model/NAME (the
model folder, with Range requests, for the page), GET / (the page).
One generation runs at a time; the others wait in the queue. A client that disconnects stops its
generation. SIGINT or SIGTERM: stop taking requests, finish the running one, exit 0 (a second
signal exits at once with 130). One JSON line per request on stderr (a plain line on a terminal).
`;

export async function serveMain(argv: string[]): Promise<number> {
  const cmd = "serve";
  const { values } = parseFlags(cmd, argv, {
    model: { type: "string" },
    host: { type: "string" },
    port: { type: "string" },
    "api-key": { type: "string" },
    name: { type: "string" },
    queue: { type: "string" },
    "max-tokens": { type: "string" },
    "max-body": { type: "string" },
    context: { type: "string" },
    quiet: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(SERVE_HELP);
    return 0;
  }
  const dir = resolve(requireString(cmd, values.model, "model"));
  const host = values.host === undefined ? "127.0.0.1" : String(values.host);
  if (host.trim() === "") throw new UserError(`${cmd}: --host is empty`);
  const port = intFlag(cmd, values.port, "port", 0, 8080);
  if (port > 65535) throw new UserError(`${cmd}: --port must be at most 65535 (got ${port})`);
  const apiKey = values["api-key"] !== undefined
    ? String(values["api-key"])
    : Deno.env.get("CLUSCOMP_API_KEY") || null;
  if (apiKey !== null && apiKey.trim() === "") throw new UserError(`${cmd}: --api-key is empty`);
  const queue = intFlag(cmd, values.queue, "queue", 0, 16);
  const maxBody = bytesFlag(cmd, values["max-body"], "max-body", 1 << 20);
  const contextFlag = values.context === undefined
    ? undefined
    : intFlag(cmd, values.context, "context", 2);
  const quiet = Boolean(values.quiet);

  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(dir);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new UserError(`${cmd}: --model ${dir}: no such folder`);
    }
    throw e;
  }
  if (!info.isDirectory) throw new UserError(`${cmd}: --model ${dir}: not a folder`);
  const chat = await ChatTemplate.load(dir);
  const engine = await Engine.open(dir, await getGpu(), { queue, context: contextFlag });
  if (contextFlag !== undefined && contextFlag > engine.model.cfg.maxPositions) {
    engine.release();
    throw new UserError(
      `${cmd}: --context ${contextFlag} is more than the model's max_position_embeddings ` +
        `(${engine.model.cfg.maxPositions})`,
    );
  }
  const maxTokens = intFlag(cmd, values["max-tokens"], "max-tokens", 1, engine.context);

  const tty = Deno.stderr.isTerminal();
  const enc = new TextEncoder();
  const write = (line: string) => Deno.stderr.writeSync(enc.encode(line + "\n"));
  const log = (rec: Record<string, unknown>) => {
    const t = new Date().toISOString();
    if (!tty) {
      write(JSON.stringify({ t, ...rec }));
      return;
    }
    const extra = rec.completion_tokens !== undefined
      ? `  ${rec.prompt_tokens}+${rec.completion_tokens} tokens (${rec.finish_reason})`
      : "";
    write(`${t.slice(11, 19)} ${rec.method} ${rec.path} ${rec.status} ${rec.ms} ms${extra}`);
  };
  const server = new Server(engine, chat, {
    modelDir: dir,
    modelName: values.name === undefined ? basename(dir) : String(values.name),
    apiKey,
    maxBody,
    maxTokens,
    log: quiet ? () => {} : log,
  });

  let httpServer: Deno.HttpServer;
  try {
    httpServer = Deno.serve({
      hostname: host,
      port,
      onListen: ({ hostname, port }) => {
        const h = hostname.includes(":") ? `[${hostname}]` : hostname;
        const url = `http://${h}:${port}`;
        if (tty) {
          write(
            `serving ${basename(dir)} on ${url} (${engine.gpu.adapterName}; queue ${queue}, ` +
              `context ${engine.context}${apiKey ? ", API key required" : ""})`,
          );
        } else {
          write(JSON.stringify({ t: new Date().toISOString(), event: "listening", url, port }));
        }
      },
    }, server.handle);
  } catch (e) {
    engine.release();
    if (e instanceof Deno.errors.AddrInUse) {
      throw new UserError(`${cmd}: --port ${port}: the address ${host}:${port} is in use`);
    }
    if (e instanceof Deno.errors.AddrNotAvailable || e instanceof Deno.errors.PermissionDenied) {
      throw new UserError(`${cmd}: cannot listen on ${host}:${port}: ${(e as Error).message}`);
    }
    throw e;
  }

  // First signal: refuse new work, let the running generation finish, then exit 0.
  let stopping = false;
  const onSignal = () => {
    if (stopping) {
      write(tty ? "second signal: exiting now" : JSON.stringify({ event: "forced_exit" }));
      Deno.exit(130);
    }
    stopping = true;
    write(
      tty
        ? "shutting down: finishing the running request (signal again to exit now)"
        : JSON.stringify({ t: new Date().toISOString(), event: "shutting_down" }),
    );
    server.drain();
    engine.close().then(() => httpServer.shutdown());
  };
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  for (const s of signals) Deno.addSignalListener(s, onSignal);
  await httpServer.finished;
  for (const s of signals) Deno.removeSignalListener(s, onSignal);
  engine.release();
  if (!tty) write(JSON.stringify({ t: new Date().toISOString(), event: "stopped" }));
  return 0;
}
