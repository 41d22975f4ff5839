// Bad requests to the real `deno task serve` (compressed kjv-llama, no chat template, with
// --api-key, a small body cap and max_tokens cap): each gets its status and an OpenAI-style JSON
// error naming the field, and the server keeps serving. Also the page's model-folder routes:
// the file list and Range requests.
import assert from "node:assert/strict";
import { compressedKjv, startServer } from "./server.ts";

const KEY = "sk-test-123";
const AUTH = { authorization: `Bearer ${KEY}` };

interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

async function expectError(
  res: Response,
  status: number,
  param: string | null,
  code?: string,
): Promise<ErrorBody> {
  const text = await res.text();
  assert.equal(res.status, status, text);
  assert.match(res.headers.get("content-type") ?? "", /application\/json/);
  const body = JSON.parse(text) as ErrorBody;
  assert.equal(typeof body.error.message, "string");
  assert.ok(body.error.message.length > 0);
  assert.equal(body.error.param, param, text);
  if (code) assert.equal(body.error.code, code, text);
  if (param) {
    assert.ok(body.error.message.includes(param), `"${body.error.message}" names ${param}`);
  }
  return body;
}

Deno.test("bad requests get their status and a JSON error; the server keeps serving", async () => {
  const folder = await compressedKjv();
  const server = await startServer([
    "--model",
    folder,
    "--api-key",
    KEY,
    "--max-body",
    "4096",
    "--max-tokens",
    "64",
  ]);
  const url = server.url;
  const post = (path: string, body: BodyInit, headers: Record<string, string> = AUTH) =>
    fetch(`${url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body,
    });
  const good = JSON.stringify({ prompt: "In the beginning", max_tokens: 4, temperature: 0 });
  const serves = async () => {
    const r = await post("/v1/completions", good);
    assert.equal(r.status, 200);
    assert.equal((await r.json()).usage.completion_tokens, 4);
  };
  try {
    // the bearer token
    await expectError(await post("/v1/completions", good, {}), 401, null, "invalid_api_key");
    await expectError(
      await post("/v1/completions", good, { authorization: "Bearer nope" }),
      401,
      null,
      "invalid_api_key",
    );
    await expectError(await fetch(`${url}/v1/models`), 401, null, "invalid_api_key");
    await expectError(await fetch(`${url}/model/files`), 401, null, "invalid_api_key");
    assert.equal((await fetch(`${url}/health`)).status, 200, "/health needs no key");
    await serves();

    // malformed JSON, not an object
    await expectError(await post("/v1/completions", '{"prompt": "x",'), 400, null, "invalid_json");
    await expectError(await post("/v1/completions", "[1, 2]"), 400, null);
    // wrong types, missing and bad fields
    await expectError(
      await post("/v1/completions", JSON.stringify({ prompt: "x", max_tokens: "5" })),
      400,
      "max_tokens",
    );
    await expectError(
      await post("/v1/completions", JSON.stringify({ prompt: "x", temperature: "hot" })),
      400,
      "temperature",
    );
    await expectError(
      await post("/v1/completions", JSON.stringify({ prompt: 12 })),
      400,
      "prompt",
    );
    await expectError(
      await post("/v1/completions", JSON.stringify({ max_tokens: 3 })),
      400,
      "prompt",
      "missing_required_parameter",
    );
    await expectError(
      await post("/v1/completions", JSON.stringify({ prompt: "x", n: 2 })),
      400,
      "n",
    );
    await expectError(
      await post(
        "/v1/completions",
        JSON.stringify({ prompt: "x", stop: ["a", "b", "c", "d", "e"] }),
      ),
      400,
      "stop",
    );
    await expectError(
      await post(
        "/v1/chat/completions",
        JSON.stringify({ messages: [{ role: "user", content: 5 }] }),
      ),
      400,
      "messages.0.content",
    );
    // max_tokens over the cap
    await expectError(
      await post("/v1/completions", JSON.stringify({ prompt: "x", max_tokens: 65 })),
      400,
      "max_tokens",
      "max_tokens_too_large",
    );
    // a prompt longer than the context
    await expectError(
      await post("/v1/completions", JSON.stringify({ prompt: "And God said ".repeat(200) })),
      400,
      "prompt",
      "context_length_exceeded",
    );
    // no chat template in this folder
    await expectError(
      await post(
        "/v1/chat/completions",
        JSON.stringify({ messages: [{ role: "user", content: "hi" }] }),
      ),
      400,
      "messages",
      "no_chat_template",
    );
    await serves();

    // oversized bodies: with a Content-Length, and chunked without one
    const big = JSON.stringify({ prompt: "x".repeat(5000) });
    await expectError(await post("/v1/completions", big), 413, null, "body_too_large");
    const chunked = new ReadableStream<Uint8Array>({
      start(c) {
        for (let i = 0; i < 8; i++) c.enqueue(new TextEncoder().encode(" ".repeat(1000)));
        c.close();
      },
    });
    await expectError(
      await fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: AUTH,
        body: chunked,
        // @ts-ignore: fetch needs duplex for a stream body
        duplex: "half",
      }),
      413,
      null,
      "body_too_large",
    );
    // unknown route, wrong method
    await expectError(await fetch(`${url}/v1/nothing`, { headers: AUTH }), 404, null, "not_found");
    await expectError(
      await fetch(`${url}/nothing`, { method: "POST", headers: AUTH }),
      404,
      null,
      "not_found",
    );
    await expectError(await fetch(`${url}/nothing.js`), 404, null, "not_found");
    const wrong = await fetch(`${url}/v1/completions`, { headers: AUTH });
    assert.equal(wrong.headers.get("allow"), "POST");
    await expectError(wrong, 405, null, "method_not_allowed");
    await serves();
    assert.equal((await fetch(`${url}/health`)).status, 200);
  } finally {
    await server.stop();
  }
  assert.ok(
    server.logs.some((r) => r.status === 413) && server.logs.some((r) => r.status === 401),
    "refused requests are logged",
  );
});

Deno.test("the page and its model folder: file list and Range requests", async () => {
  const folder = await compressedKjv();
  const server = await startServer(["--model", folder]);
  const url = server.url;
  try {
    const list = await (await fetch(`${url}/model/files`)).json() as {
      name: string;
      size: number;
    }[];
    const want: { name: string; size: number }[] = [];
    for await (const e of Deno.readDir(folder)) {
      if (e.isFile) {
        want.push({ name: e.name, size: (await Deno.stat(`${folder}/${e.name}`)).size });
      }
    }
    want.sort((a, b) => (a.name < b.name ? -1 : 1));
    assert.deepEqual(list, want);
    const shard = list.find((f) => f.name.endsWith(".safetensors"))!;
    const bytes = await Deno.readFile(`${folder}/${shard.name}`);
    const get = (range?: string) =>
      fetch(`${url}/model/${encodeURIComponent(shard.name)}`, {
        headers: range ? { range } : {},
      });

    const whole = await get();
    assert.equal(whole.status, 200);
    assert.equal(whole.headers.get("accept-ranges"), "bytes");
    assert.deepEqual(new Uint8Array(await whole.arrayBuffer()), bytes);

    const cases: [string, number, number][] = [
      ["bytes=0-7", 0, 7],
      ["bytes=100-1099", 100, 1099],
      [`bytes=${bytes.length - 10}-`, bytes.length - 10, bytes.length - 1],
      ["bytes=-16", bytes.length - 16, bytes.length - 1],
      [`bytes=5-${bytes.length + 100}`, 5, bytes.length - 1],
    ];
    for (const [range, a, b] of cases) {
      const r = await get(range);
      assert.equal(r.status, 206, range);
      assert.equal(r.headers.get("content-range"), `bytes ${a}-${b}/${bytes.length}`, range);
      assert.deepEqual(new Uint8Array(await r.arrayBuffer()), bytes.subarray(a, b + 1), range);
    }
    for (const range of [`bytes=${bytes.length}-`, "bytes=9-3", "bytes=-0"]) {
      const r = await get(range);
      assert.equal(r.status, 416, range);
      assert.equal(r.headers.get("content-range"), `bytes */${bytes.length}`, range);
      await r.body?.cancel();
    }
    // names outside the folder's listing
    for (const name of ["nothing.bin", "..%2Fout%2Fconfig.json", "%2E%2E/%2E%2E/deno.json"]) {
      const r = await fetch(`${url}/model/${name}`);
      assert.equal(r.status, 404, name);
      await r.body?.cancel();
    }
    const cfg = await fetch(`${url}/model/config.json`, { headers: { range: "bytes=0-0" } });
    assert.equal(await cfg.text(), "{");
    // the page itself (src/web/assets.ts)
    const page = await fetch(`${url}/`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get("content-type") ?? "", /text\/html/);
    await page.body?.cancel();
  } finally {
    await server.stop();
  }
});
