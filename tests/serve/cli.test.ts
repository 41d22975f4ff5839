// `deno task serve` as a command: bad flags are one error line and a non-zero exit; SIGTERM
// finishes the running generation, refuses the waiting one (503) and exits 0.
import assert from "node:assert/strict";
import { assertOneErrorLine } from "../cli/errors.ts";
import { runTask } from "../pipeline/run.ts";
import { compressedKjv, KJV, startServer } from "./server.ts";

Deno.test("serve refuses bad flags with one error line", async () => {
  const cases: [string[], string][] = [
    [["--model", "/nonexistent/folder"], "--model"],
    [["--model", KJV, "--port", "70000"], "--port"],
    [["--model", KJV, "--queue", "-1"], "--queue"],
    [["--model", KJV, "--max-body", "lots"], "--max-body"],
    [["--model", KJV, "--bogus"], "bogus"],
    [["--port", "80"], "--model"],
  ];
  for (const [args, needle] of cases) {
    assertOneErrorLine(await runTask("serve", args), needle);
  }
  const help = await runTask("serve", ["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /POST \/v1\/completions/);
});

Deno.test("SIGTERM lets the running generation finish, refuses the waiting one, exits 0", async () => {
  const folder = await compressedKjv();
  const server = await startServer(["--model", folder, "--queue", "1"]);
  const url = server.url;
  const post = (body: unknown) =>
    fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
  try {
    const running = await post({
      prompt: "In the beginning",
      max_tokens: 60,
      temperature: 0,
      stream: true,
    });
    assert.equal(running.status, 200);
    const reader = running.body!.getReader();
    const dec = new TextDecoder();
    let text = dec.decode((await reader.read()).value);
    const waiting = post({ prompt: "In the beginning", max_tokens: 4, temperature: 0 });
    // the second request is queued before the signal
    for (let i = 0; i < 500; i++) {
      const h = await (await fetch(`${url}/health`)).json();
      if (h.queue.waiting === 1) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    server.terminate();
    const refused = await waiting;
    assert.equal(refused.status, 503);
    assert.equal((await refused.json()).error.code, "shutting_down");
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      text += dec.decode(value);
    }
    assert.match(text, /"finish_reason":"length"/);
    assert.match(text, /"completion_tokens":60/);
    assert.ok(text.trimEnd().endsWith("data: [DONE]"));
  } finally {
    await server.stop();
  }
  assert.ok(server.logs.some((r) => r.event === "shutting_down"));
});
