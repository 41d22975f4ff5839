// Server throughput: the OpenAI-style server (in this process, on a free port) on a compressed
// folder, streamed completions from 1, 4 and 16 concurrent clients. Requests per second, time to
// first token (request sent -> first text chunk) and the generated tokens per second over all.
import type { Gpu } from "../gpu/device.ts";
import { Engine } from "../serve/engine.ts";
import { Server } from "../serve/server.ts";

export interface ServeBenchOptions {
  concurrency: number[];
  /** Requests each client sends, one after another. */
  perClient: number;
  promptTokens: number;
  maxTokens: number;
}

/** One streamed greedy completion: ms to the first text chunk, ms in all, tokens generated. */
async function oneRequest(
  url: string,
  prompt: number[],
  maxTokens: number,
): Promise<{ ttft: number; total: number; tokens: number }> {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      prompt,
      max_tokens: maxTokens,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  if (res.status !== 200) throw new Error(`bench serve: HTTP ${res.status}: ${await res.text()}`);
  let ttft = NaN, tokens = 0, buf = "";
  const dec = new TextDecoder();
  for await (const chunk of res.body!) {
    buf += dec.decode(chunk, { stream: true });
    let cut: number;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      if (!ev.startsWith("data: {")) continue;
      const obj = JSON.parse(ev.slice(6));
      if (Number.isNaN(ttft) && obj.choices?.[0]?.text) ttft = performance.now() - t0;
      if (obj.usage) tokens = obj.usage.completion_tokens;
    }
  }
  return { ttft, total: performance.now() - t0, tokens };
}

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

export async function benchServe(
  gpu: Gpu,
  folder: string,
  text: string,
  o: ServeBenchOptions,
): Promise<Record<string, unknown>[]> {
  const engine = await Engine.open(folder, gpu, { queue: Math.max(...o.concurrency) });
  const prompt = Array.from(
    engine.encode((await Deno.readTextFile(text)).slice(0, 20_000)).subarray(0, o.promptTokens),
  );
  const server = new Server(engine, null, {
    modelDir: folder,
    modelName: "bench",
    apiKey: null,
    maxBody: 1 << 20,
    maxTokens: engine.context,
    log: () => {},
  });
  let port = 0;
  const http = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen: (a) => (port = a.port),
  }, server.handle);
  const url = `http://127.0.0.1:${port}`;
  const rows: Record<string, unknown>[] = [];
  try {
    await oneRequest(url, prompt, o.maxTokens); // compiles the pipelines
    for (const c of o.concurrency) {
      const results: { ttft: number; total: number; tokens: number }[] = [];
      const t0 = performance.now();
      await Promise.all(Array.from({ length: c }, async () => {
        for (let i = 0; i < o.perClient; i++) {
          results.push(await oneRequest(url, prompt, o.maxTokens));
        }
      }));
      const seconds = (performance.now() - t0) / 1000;
      const tokens = results.reduce((a, r) => a + r.tokens, 0);
      const ttft = results.map((r) => r.ttft);
      rows.push({
        name: "serve",
        concurrency: c,
        requests: results.length,
        prompt_tokens: prompt.length,
        max_tokens: o.maxTokens,
        requests_per_s: results.length / seconds,
        ttft_ms_median: quantile(ttft, 0.5),
        ttft_ms_p90: quantile(ttft, 0.9),
        latency_ms_median: quantile(results.map((r) => r.total), 0.5),
        tokens_per_s: tokens / seconds,
      });
    }
  } finally {
    await http.shutdown();
    engine.release();
  }
  return rows;
}
