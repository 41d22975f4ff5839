// The HTTP side of `serve`: routes, bearer auth, body cap, validation, the OpenAI-style
// completions and chat completions (JSON or server-sent events), and the page's routes (the
// page's assets and the model folder). One log record per request.
import { webAsset } from "../web/assets.ts";
import type { ChatTemplate } from "./chat.ts";
import type { Engine, Job, JobResult } from "./engine.ts";
import { ApiError } from "./errors.ts";
import { listFiles, serveModelFile } from "./files.ts";
import { ChatRequest, CompletionRequest, parseBody } from "./schema.ts";

export interface ServerOptions {
  /** The model folder (served under /model/ for the page). */
  modelDir: string;
  /** The id /v1/models lists and answers carry. */
  modelName: string;
  /** Required as `Authorization: Bearer KEY` on /v1/ and /model/ when set. */
  apiKey: string | null;
  /** Largest request body in bytes (413 past it). */
  maxBody: number;
  /** Largest max_tokens a request may ask (400 past it). */
  maxTokens: number;
  /** Receives one record per finished request. */
  log: (rec: Record<string, unknown>) => void;
}

/** Tokens a completion request gets without max_tokens (OpenAI's default). */
const DEFAULT_COMPLETION_TOKENS = 16;

type Kind = "completion" | "chat";

/** A validated request: the engine's job (less what the connection supplies), and how to answer. */
interface Prepared extends Omit<Job, "signal" | "onText"> {
  kind: Kind;
  stream: boolean;
  includeUsage: boolean;
}

const ROUTES: Record<string, string[]> = {
  "/health": ["GET", "HEAD"],
  "/v1/models": ["GET"],
  "/v1/completions": ["POST"],
  "/v1/chat/completions": ["POST"],
  "/model/files": ["GET"],
};

export class Server {
  private draining = false;

  constructor(
    readonly engine: Engine,
    readonly chat: ChatTemplate | null,
    readonly opts: ServerOptions,
  ) {}

  /** Stops taking generation requests (503); /health reports it. */
  drain(): void {
    this.draining = true;
  }

  /** Deno.serve's handler. */
  handle = async (req: Request): Promise<Response> => {
    const t0 = performance.now();
    const url = new URL(req.url);
    const rec: Record<string, unknown> = { method: req.method, path: url.pathname };
    let res: Response;
    try {
      res = await this.route(req, url, rec, t0);
    } catch (e) {
      const err = e instanceof ApiError
        ? e
        : new ApiError(500, `internal error: ${(e as Error)?.message ?? e}`, null, "internal");
      if (!(e instanceof ApiError)) rec.error = String((e as Error)?.stack ?? e);
      res = err.response();
    }
    rec.status ??= res.status;
    // A streamed answer logs itself when its generation ends.
    if (!rec.streaming) this.finish(rec, t0);
    return res;
  };

  private finish(rec: Record<string, unknown>, t0: number): void {
    delete rec.streaming;
    this.opts.log({ ...rec, ms: Math.round(performance.now() - t0) });
  }

  private async route(
    req: Request,
    url: URL,
    rec: Record<string, unknown>,
    t0: number,
  ): Promise<Response> {
    const path = url.pathname;
    // Known routes and /model/<name> answer 405 to another method; anything else is the page's
    // (GET) or nothing (404).
    const page = !ROUTES[path] && !path.startsWith("/model/") && !path.startsWith("/v1/") &&
      (req.method === "GET" || req.method === "HEAD");
    const allowed = ROUTES[path] ?? (path.startsWith("/model/") || page ? ["GET", "HEAD"] : []);
    if (allowed.length === 0) throw new ApiError(404, `no route ${path}`, null, "not_found");
    if (!allowed.includes(req.method)) {
      throw new ApiError(
        405,
        `${req.method} is not allowed on ${path} (use ${allowed.join(" or ")})`,
        null,
        "method_not_allowed",
        undefined,
        { allow: allowed.join(", ") },
      );
    }
    if (path.startsWith("/v1/") || path.startsWith("/model/")) this.authorize(req);

    switch (path) {
      case "/health":
        return Response.json({
          status: this.draining ? "shutting_down" : "ok",
          model: this.opts.modelName,
          queue: {
            running: this.engine.running ? 1 : 0,
            waiting: this.engine.queued,
            limit: this.engine.queueLimit,
          },
          stats: this.engine.stats,
        }, { status: this.draining ? 503 : 200 });
      case "/v1/models":
        return Response.json({
          object: "list",
          data: [{ id: this.opts.modelName, object: "model", created: 0, owned_by: "cluscomp" }],
        });
      case "/v1/completions":
        return await this.generate(req, "completion", rec, t0);
      case "/v1/chat/completions":
        return await this.generate(req, "chat", rec, t0);
      case "/model/files":
        return Response.json(await listFiles(this.opts.modelDir));
    }
    if (path.startsWith("/model/")) {
      let name: string;
      try {
        name = decodeURIComponent(path.slice("/model/".length));
      } catch {
        throw new ApiError(400, `bad file name in ${path}`, null, "invalid_path");
      }
      return await serveModelFile(this.opts.modelDir, name, req);
    }
    const asset = webAsset(path);
    if (asset === null) throw new ApiError(404, `no route ${path}`, null, "not_found");
    const payload = typeof asset.body === "string" ? asset.body : asset.body.slice().buffer;
    return new Response(req.method === "HEAD" ? null : payload, {
      headers: { "content-type": asset.type },
    });
  }

  private authorize(req: Request): void {
    const key = this.opts.apiKey;
    if (key === null) return;
    const auth = req.headers.get("authorization") ?? "";
    const m = /^Bearer\s+(.+)$/i.exec(auth.trim());
    if (!m || !sameString(m[1], key)) {
      throw new ApiError(
        401,
        m ? "the API key is wrong" : "missing API key: send Authorization: Bearer KEY",
        null,
        "invalid_api_key",
        "authentication_error",
        { "www-authenticate": "Bearer" },
      );
    }
  }

  /** The body as JSON, refused past the size cap (413) or when malformed (400). */
  private async readJson(req: Request): Promise<unknown> {
    const max = this.opts.maxBody;
    const tooBig = () =>
      new ApiError(413, `the request body is larger than ${max} bytes`, null, "body_too_large");
    const declared = Number(req.headers.get("content-length") ?? NaN);
    if (declared > max) throw tooBig();
    const parts: Uint8Array[] = [];
    let total = 0;
    if (req.body) {
      for await (const chunk of req.body) {
        total += chunk.length;
        if (total > max) throw tooBig();
        parts.push(chunk);
      }
    }
    const bytes = new Uint8Array(total);
    let off = 0;
    for (const p of parts) {
      bytes.set(p, off);
      off += p.length;
    }
    let text: string;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
      return JSON.parse(text);
    } catch (e) {
      throw new ApiError(
        400,
        `the request body is not valid JSON: ${(e as Error).message}`,
        null,
        "invalid_json",
      );
    }
  }

  private async prepare(req: Request, kind: Kind): Promise<Prepared> {
    const body = await this.readJson(req);
    const e = this.engine;
    let ids: Int32Array;
    let maxTokens: number;
    let maxParam = "max_tokens";
    let common: CompletionRequest | ChatRequest;
    if (kind === "completion") {
      const r = parseBody(CompletionRequest, body);
      common = r;
      const p = r.prompt;
      if (typeof p === "string") ids = e.encode(p);
      else if (typeof p[0] === "string") ids = e.encode(p[0] as string);
      else ids = Int32Array.from(p as number[]);
      e.checkPrompt(ids, "prompt");
      maxTokens = r.max_tokens ?? DEFAULT_COMPLETION_TOKENS;
    } else {
      const r = parseBody(ChatRequest, body);
      common = r;
      if (this.chat === null) {
        throw new ApiError(
          400,
          `messages: the model ${this.opts.modelName} has no chat template ` +
            `(tokenizer_config.json has no chat_template); use /v1/completions`,
          "messages",
          "no_chat_template",
        );
      }
      const text = this.chat.render(r.messages);
      const bos = this.chat.bosToken;
      ids = e.encode(text, !(bos !== "" && text.startsWith(bos)));
      e.checkPrompt(ids, "messages");
      if (r.max_completion_tokens != null) maxParam = "max_completion_tokens";
      maxTokens = r.max_completion_tokens ?? r.max_tokens ?? this.opts.maxTokens;
    }
    if (maxTokens > this.opts.maxTokens) {
      throw new ApiError(
        400,
        `${maxParam}: ${maxTokens} is more than this server's cap of ${this.opts.maxTokens}`,
        maxParam,
        "max_tokens_too_large",
      );
    }
    const stop = common.stop;
    return {
      kind,
      ids,
      maxTokens,
      temperature: common.temperature ?? 1,
      topP: common.top_p ?? 1,
      seed: common.seed ?? Math.floor(Math.random() * 2 ** 31),
      stops: (typeof stop === "string" ? [stop] : stop ?? []).filter((s) => s !== ""),
      stream: common.stream === true,
      includeUsage: common.stream_options?.include_usage === true,
    };
  }

  private async generate(
    req: Request,
    kind: Kind,
    rec: Record<string, unknown>,
    t0: number,
  ): Promise<Response> {
    if (this.draining) {
      throw new ApiError(503, "the server is shutting down", null, "shutting_down");
    }
    const p = await this.prepare(req, kind);
    rec.prompt_tokens = p.ids.length;
    rec.max_tokens = p.maxTokens;
    rec.stream = p.stream;
    const id = `${kind === "chat" ? "chatcmpl" : "cmpl"}-${
      crypto.randomUUID().replaceAll("-", "")
    }`;
    const created = Math.floor(Date.now() / 1000);
    const model = this.opts.modelName;
    const abort = new AbortController();
    const onClose = () => abort.abort();
    req.signal.addEventListener("abort", onClose, { once: true });
    const job: Job = {
      ids: p.ids,
      maxTokens: p.maxTokens,
      temperature: p.temperature,
      topP: p.topP,
      seed: p.seed,
      stops: p.stops,
      signal: abort.signal,
    };
    const record = (r: JobResult) => {
      rec.completion_tokens = r.completionTokens;
      rec.finish_reason = r.finishReason;
      if (r.finishReason === "cancelled") rec.status = 499; // nginx's "client closed request"
      rec.queue_ms = Math.round(r.queueMs);
      rec.ttft_ms = Math.round(r.ttftMs);
    };
    const usage = (r: JobResult) => ({
      prompt_tokens: r.promptTokens,
      completion_tokens: r.completionTokens,
      total_tokens: r.promptTokens + r.completionTokens,
    });
    const full = () =>
      new ApiError(
        503,
        `the queue is full (${this.engine.queueLimit} waiting): try again later`,
        null,
        "queue_full",
        "server_error",
        { "retry-after": "1" },
      );

    if (!p.stream) {
      const pending = this.engine.submit(job);
      if (pending === null) throw full();
      const r = await pending.finally(() => req.signal.removeEventListener("abort", onClose));
      record(r);
      const finish = r.finishReason === "cancelled" ? null : r.finishReason;
      const choice = kind === "chat"
        ? {
          index: 0,
          message: { role: "assistant", content: r.text },
          logprobs: null,
          finish_reason: finish,
        }
        : { index: 0, text: r.text, logprobs: null, finish_reason: finish };
      return Response.json({
        id,
        object: kind === "chat" ? "chat.completion" : "text_completion",
        created,
        model,
        choices: [choice],
        usage: usage(r),
      });
    }

    // Server-sent events: one chunk per printable piece, the finish chunk, usage, [DONE].
    const enc = new TextEncoder();
    let ctl!: ReadableStreamDefaultController<Uint8Array>;
    let open = true;
    const send = (obj: unknown) => {
      if (!open) return;
      try {
        ctl.enqueue(enc.encode(`data: ${typeof obj === "string" ? obj : JSON.stringify(obj)}\n\n`));
      } catch {
        open = false;
        abort.abort();
      }
    };
    const object = kind === "chat" ? "chat.completion.chunk" : "text_completion";
    const chunk = (
      choice: Record<string, unknown> | null,
      extra: Record<string, unknown> = {},
    ) => ({
      id,
      object,
      created,
      model,
      choices: choice ? [{ index: 0, logprobs: null, finish_reason: null, ...choice }] : [],
      ...(p.includeUsage ? { usage: null } : {}),
      ...extra,
    });
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        ctl = c;
      },
      cancel() {
        open = false;
        abort.abort();
      },
    });
    job.onText = (piece) =>
      send(chunk(kind === "chat" ? { delta: { content: piece } } : { text: piece }));
    const pending = this.engine.submit(job);
    if (pending === null) {
      req.signal.removeEventListener("abort", onClose);
      throw full();
    }
    if (kind === "chat") send(chunk({ delta: { role: "assistant", content: "" } }));
    rec.streaming = true;
    pending.then((r) => {
      record(r);
      if (r.finishReason !== "cancelled") {
        const fin = { finish_reason: r.finishReason };
        send(chunk(
          kind === "chat" ? { delta: {}, ...fin } : { text: "", ...fin },
          p.includeUsage ? {} : { usage: usage(r) },
        ));
        if (p.includeUsage) send(chunk(null, { usage: usage(r) }));
        send("[DONE]");
      }
    }, (e) => {
      const err = e instanceof ApiError
        ? e
        : new ApiError(500, `internal error: ${(e as Error)?.message ?? e}`, null, "internal");
      rec.status = err.status;
      rec.error = err.message;
      send(err.body());
      send("[DONE]");
    }).finally(() => {
      req.signal.removeEventListener("abort", onClose);
      if (open) {
        open = false;
        try {
          ctl.close();
        } catch { /* cancelled */ }
      }
      this.finish(rec, t0);
    });
    return new Response(body, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
      },
    });
  }
}

/** Compares two strings in time that depends only on their lengths. */
function sameString(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a), y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}
