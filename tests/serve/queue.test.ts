// The request queue of the real `deno task serve` on the compressed kjv-llama: a client that
// disconnects (streamed or not) stops its generation and frees its place; a full queue answers
// 503; 20 concurrent requests all finish while /health keeps answering.
import assert from "node:assert/strict";
import { compressedKjv, generateJson, startServer } from "./server.ts";

const PROMPT = "In the beginning";

function post(url: string, body: unknown, signal?: AbortSignal): Promise<Response> {
  return fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal,
  });
}

interface Health {
  queue: { running: number; waiting: number; limit: number };
  stats: { served: number; cancelled: number; rejected: number; tokens: number };
}

async function health(url: string): Promise<Health> {
  const r = await fetch(`${url}/health`);
  assert.equal(r.status, 200);
  return await r.json();
}

/** Waits until `cond` holds on /health (polling), or fails after `ms`. */
async function until(url: string, cond: (h: Health) => boolean, ms = 60_000): Promise<Health> {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    const h = await health(url);
    if (cond(h)) return h;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`/health never reached the state: ${JSON.stringify(await health(url))}`);
}

Deno.test("a disconnect frees the queue and stops its generation; a full queue is 503", async () => {
  const folder = await compressedKjv();
  const server = await startServer(["--model", folder, "--queue", "1"]);
  const url = server.url;
  try {
    // A long streamed request, dropped after its first pieces.
    const ac = new AbortController();
    const long = await post(url, {
      prompt: PROMPT,
      max_tokens: 240,
      temperature: 0,
      stream: true,
    }, ac.signal);
    assert.equal(long.status, 200);
    const reader = long.body!.getReader();
    let seen = "";
    while ((seen.match(/"text":"[^"]/g) ?? []).length < 2) {
      const { value } = await reader.read();
      seen += new TextDecoder().decode(value);
    }
    // While it runs: one more waits (the queue holds 1), a third is refused.
    const waitingAc = new AbortController();
    const waiting = post(url, { prompt: PROMPT, max_tokens: 4, temperature: 0 }, waitingAc.signal)
      .catch((e) => e);
    await until(url, (h) => h.queue.waiting === 1);
    const refused = await post(url, { prompt: PROMPT, max_tokens: 4, temperature: 0 });
    assert.equal(refused.status, 503);
    assert.equal((await refused.json()).error.code, "queue_full");
    // The waiting client gives up: its place is freed without generating.
    waitingAc.abort();
    assert.ok((await waiting) instanceof Error);
    await until(url, (h) => h.queue.waiting === 0 && h.stats.cancelled === 1);
    // The streaming client goes away: its generation stops long before 240 tokens.
    ac.abort();
    await reader.cancel().catch(() => {});
    await until(url, (h) => !h.queue.running && h.stats.cancelled === 2);

    // A non-streamed request whose client disconnects mid-generation stops as well.
    const ac2 = new AbortController();
    const dropped = post(url, { prompt: PROMPT, max_tokens: 240, temperature: 0 }, ac2.signal)
      .catch((e) => e);
    await until(url, (h) => h.queue.running === 1 && h.stats.tokens > 0);
    ac2.abort();
    assert.ok((await dropped) instanceof Error);
    await until(url, (h) => !h.queue.running && h.stats.cancelled === 3);

    // The next request is served in full.
    const ref = await generateJson(folder, PROMPT, 8);
    const ok = await post(url, { prompt: PROMPT, max_tokens: 8, temperature: 0 });
    assert.equal(ok.status, 200);
    const body = await ok.json();
    assert.equal(body.choices[0].text, ref.text);
    const h = await health(url);
    assert.equal(h.stats.served, 1);
    assert.equal(h.stats.rejected, 1);
    // Counted generation: the two dropped long requests stopped early (8 tokens for the last).
    assert.ok(h.stats.tokens < 2 * 240, `tokens generated in all: ${h.stats.tokens}`);
  } finally {
    await server.stop();
  }
  const cancelled = server.logs.filter((r) => r.finish_reason === "cancelled");
  assert.equal(cancelled.length, 3, JSON.stringify(server.logs));
  assert.ok(cancelled.every((r) => r.status === 499), "a dropped request is logged as 499");
  const byTokens = cancelled.map((r) => r.completion_tokens as number).sort((a, b) => a - b);
  assert.equal(byTokens[0], 0, "the request dropped while waiting generated nothing");
  for (const n of byTokens.slice(1)) {
    assert.ok(n >= 1 && n < 200, `a dropped generation stopped early (${n} of 240 tokens)`);
  }
});

Deno.test("20 concurrent requests all finish while /health keeps answering", async () => {
  const folder = await compressedKjv();
  const server = await startServer(["--model", folder, "--queue", "19"]);
  const url = server.url;
  try {
    const ref = await generateJson(folder, PROMPT, 6);
    let done = false;
    const healthTimes: number[] = [];
    let sawBusy = 0;
    const poll = (async () => {
      while (!done) {
        const t = performance.now();
        const h = await health(url);
        healthTimes.push(performance.now() - t);
        if (h.queue.running === 1 && h.queue.waiting > 0) sawBusy++;
        await new Promise((r) => setTimeout(r, 25));
      }
    })();
    const answers = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        post(url, {
          prompt: PROMPT,
          max_tokens: 6,
          temperature: 0,
          stream: i % 2 === 1,
        }).then(async (r) => ({ status: r.status, text: await r.text() }))),
    );
    done = true;
    await poll;
    for (const [i, a] of answers.entries()) {
      assert.equal(a.status, 200, `request ${i}: ${a.text}`);
      const text = i % 2 === 1
        ? a.text.split("\n\n").filter((l) => l.startsWith("data: {")).map((l) =>
          JSON.parse(l.slice(6)).choices[0]?.text ?? ""
        ).join("")
        : JSON.parse(a.text).choices[0].text;
      assert.equal(text, ref.text, `request ${i}`);
    }
    assert.ok(sawBusy >= 3, `/health answered ${sawBusy} times while requests waited`);
    const slowest = Math.max(...healthTimes);
    assert.ok(slowest < 2000, `/health took up to ${slowest.toFixed(0)} ms`);
    const h = await health(url);
    assert.equal(h.stats.served, 20);
    assert.equal(h.stats.rejected, 0);
  } finally {
    await server.stop();
  }
});
