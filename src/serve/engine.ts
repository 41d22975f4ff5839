// The one model on the GPU and its request queue: one generation at a time, a bounded number of
// requests waiting, a request whose client went away dropped from the queue or stopped at its
// next token.
import type { Gpu } from "../gpu/device.ts";
import { StopFilter, TextStream } from "../io/detok.ts";
import { Tokenizer } from "../io/tokenizer.ts";
import { type OpenModel, openModel } from "../format/open.ts";
import { generate, Runner } from "../model/runner.ts";
import { ApiError } from "./errors.ts";

export interface Job {
  ids: Int32Array;
  maxTokens: number;
  /** 0 = greedy. */
  temperature: number;
  topP: number;
  seed: number;
  stops: string[];
  /** Aborted when the client disconnects. */
  signal: AbortSignal;
  /** Text as it becomes printable (stop strings already cut). */
  onText?: (piece: string) => void;
}

export interface JobResult {
  text: string;
  promptTokens: number;
  completionTokens: number;
  /** "cancelled": the client went away (nobody reads the answer). */
  finishReason: "stop" | "length" | "cancelled";
  queueMs: number;
  ttftMs: number;
  genMs: number;
}

export interface EngineStats {
  served: number;
  cancelled: number;
  failed: number;
  rejected: number;
  /** Tokens generated over every request, cancelled ones included. */
  tokens: number;
}

interface Pending {
  job: Job;
  queued: number;
  resolve: (r: JobResult) => void;
  reject: (e: unknown) => void;
  onAbort: () => void;
}

export class Engine {
  readonly stats: EngineStats = { served: 0, cancelled: 0, failed: 0, rejected: 0, tokens: 0 };
  private readonly waiting: Pending[] = [];
  private busy: Promise<void> | null = null;
  private closed = false;

  private constructor(
    readonly model: OpenModel,
    readonly tokenizer: Tokenizer,
    readonly runner: Runner,
    readonly gpu: Gpu,
    readonly eosId: number | null,
    /** Most requests waiting besides the one running. */
    readonly queueLimit: number,
  ) {}

  static async open(
    dir: string,
    gpu: Gpu,
    opts: { queue: number; context?: number },
  ): Promise<Engine> {
    const model = await openModel(dir);
    try {
      const tokenizer = await Tokenizer.load(dir);
      const cfgEos = Array.isArray(model.cfg.eosId) ? model.cfg.eosId[0] : model.cfg.eosId;
      const runner = await Runner.create(gpu, model.cfg, model.source, {
        maxContext: opts.context ?? model.cfg.maxPositions,
      });
      return new Engine(
        model,
        tokenizer,
        runner,
        gpu,
        tokenizer.eosId ?? cfgEos ?? null,
        opts.queue,
      );
    } catch (e) {
      model.index.close();
      throw e;
    }
  }

  get context(): number {
    return this.runner.maxContext;
  }

  get queued(): number {
    return this.waiting.length;
  }

  get running(): boolean {
    return this.busy !== null;
  }

  /** Tokens of a prompt text (with BOS unless the text already starts with it). */
  encode(text: string, addBos = true): Int32Array {
    return this.tokenizer.encode(text, { addBos });
  }

  /** Throws a 400 naming `param` when the prompt cannot run. */
  checkPrompt(ids: Int32Array, param: string): void {
    if (ids.length === 0) throw new ApiError(400, `${param}: the prompt is empty`, param);
    if (ids.length >= this.context) {
      throw new ApiError(
        400,
        `${param}: the prompt is ${ids.length} tokens; the context holds ${this.context}, so it ` +
          `must be at most ${this.context - 1}`,
        param,
        "context_length_exceeded",
      );
    }
    for (const id of ids) {
      if (id >= this.model.cfg.vocab) {
        throw new ApiError(400, `${param}: token id ${id} is not in the vocabulary`, param);
      }
    }
  }

  /** Queues a job; null when the queue is full (or the server is shutting down). */
  submit(job: Job): Promise<JobResult> | null {
    if (this.closed || (this.busy !== null && this.waiting.length >= this.queueLimit)) {
      this.stats.rejected++;
      return null;
    }
    return new Promise<JobResult>((resolve, reject) => {
      const p: Pending = {
        job,
        queued: performance.now(),
        resolve,
        reject,
        onAbort: () => {
          // Still waiting: leave the queue at once.
          const i = this.waiting.indexOf(p);
          if (i < 0) return;
          this.waiting.splice(i, 1);
          this.stats.cancelled++;
          resolve(empty(job, "cancelled", performance.now() - p.queued));
        },
      };
      job.signal.addEventListener("abort", p.onAbort, { once: true });
      this.waiting.push(p);
      if (!this.busy) this.busy = this.pump().finally(() => (this.busy = null));
    });
  }

  /** Refuses new jobs, answers the waiting ones 503, and waits for the running one. */
  async close(): Promise<void> {
    this.closed = true;
    for (const p of this.waiting.splice(0)) {
      p.job.signal.removeEventListener("abort", p.onAbort);
      p.reject(new ApiError(503, "the server is shutting down", null, "shutting_down"));
    }
    await this.busy;
  }

  release(): void {
    this.runner.release();
    this.model.index.close();
  }

  private async pump(): Promise<void> {
    while (this.waiting.length > 0) {
      const p = this.waiting.shift()!;
      p.job.signal.removeEventListener("abort", p.onAbort);
      try {
        p.resolve(await this.run(p.job, performance.now() - p.queued));
      } catch (e) {
        this.stats.failed++;
        p.reject(e);
      }
    }
  }

  private async run(job: Job, queueMs: number): Promise<JobResult> {
    if (job.signal.aborted) {
      this.stats.cancelled++;
      return empty(job, "cancelled", queueMs);
    }
    const stream = new TextStream(this.tokenizer, job.ids);
    const filter = new StopFilter(job.stops);
    let text = "";
    let count = 0;
    const emit = (piece: string) => {
      if (piece === "") return;
      text += piece;
      job.onText?.(piece);
    };
    const t0 = performance.now();
    const r = await generate(this.runner, job.ids, {
      maxNewTokens: job.maxTokens,
      temperature: job.temperature,
      topK: 0,
      topP: job.topP,
      seed: job.seed,
      eosId: this.eosId,
      onToken: (id) => {
        count++;
        this.stats.tokens++;
        if (job.signal.aborted) return true;
        const out = filter.push(stream.push(id));
        emit(out.text);
        return out.stopped;
      },
    });
    const genMs = performance.now() - t0;
    if (job.signal.aborted) {
      this.stats.cancelled++;
      return { ...empty(job, "cancelled", queueMs), text, completionTokens: count, genMs };
    }
    if (!filter.stopped) {
      emit(filter.push(stream.flush()).text);
      emit(filter.flush());
    }
    this.stats.served++;
    return {
      text,
      promptTokens: job.ids.length,
      completionTokens: r.ids.length,
      finishReason: r.stopReason === "eos" || r.stopReason === "stop" ? "stop" : "length",
      queueMs,
      ttftMs: r.ttftMs,
      genMs,
    };
  }
}

function empty(job: Job, finishReason: JobResult["finishReason"], queueMs: number): JobResult {
  return {
    text: "",
    promptTokens: job.ids.length,
    completionTokens: 0,
    finishReason,
    queueMs,
    ttftMs: 0,
    genMs: 0,
  };
}
