// The official openai npm client against the real `deno task serve` on the compressed kjv-llama
// (with a small chat template added): completions and chat completions, with and without
// streaming, give the text `deno task generate --json` gives for the same prompt and token count
// (greedy, and seeded sampling with a stop string), with usage counts.
import assert from "node:assert/strict";
import OpenAI from "openai";
import { compressedKjv, generateJson, startServer, withChatTemplate } from "./server.ts";

const TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" +
  "{% if add_generation_prompt %}assistant:{% endif %}";
const PROMPT = "In the beginning";
const TOKENS = 24;

Deno.test("openai client: completions and chat completions equal deno task generate", async () => {
  const folder = await withChatTemplate(await compressedKjv(), TEMPLATE);
  const messages = [
    { role: "system" as const, content: "Thou art the Preacher." },
    { role: "user" as const, content: "And God said" },
  ];
  const rendered = "system: Thou art the Preacher.\nuser: And God said\nassistant:";
  const [ref, chatRef, sampled] = await Promise.all([
    generateJson(folder, PROMPT, TOKENS),
    generateJson(folder, rendered, TOKENS),
    generateJson(folder, PROMPT, 40, [
      "--temperature",
      "0.9",
      "--top-p",
      "0.95",
      "--seed",
      "7",
      "--stop",
      "fire",
      "--stop",
      "Zion",
    ]),
  ]);
  assert.equal(ref.ids.length, TOKENS, "the reference runs to the token limit");
  assert.ok(ref.text.length > 20, `reference text: ${JSON.stringify(ref.text)}`);
  assert.equal(sampled.stop_reason, "stop", "the sampled reference stops at its stop string");
  assert.ok(!ref.text.startsWith(sampled.text), "sampling draws other text than greedy");

  const server = await startServer(["--model", folder]);
  try {
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
    const models = await client.models.list();
    assert.deepEqual(models.data.map((m) => m.id), [folder.split("/").pop()]);

    // completions, one answer
    const c = await client.completions.create({
      model: "kjv",
      prompt: PROMPT,
      max_tokens: TOKENS,
      temperature: 0,
    });
    assert.equal(c.choices[0].text, ref.text);
    assert.equal(c.choices[0].finish_reason, "length");
    assert.deepEqual(c.usage, {
      prompt_tokens: ref.prompt_tokens,
      completion_tokens: TOKENS,
      total_tokens: ref.prompt_tokens + TOKENS,
    });

    // completions, streamed, usage in the last chunk
    const s = await client.completions.create({
      model: "kjv",
      prompt: PROMPT,
      max_tokens: TOKENS,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "", pieces = 0, finish: string | null = null;
    let usage: OpenAI.CompletionUsage | null | undefined = null;
    for await (const chunk of s) {
      for (const ch of chunk.choices) {
        text += ch.text;
        if (ch.text) pieces++;
        finish = ch.finish_reason ?? finish;
      }
      if (chunk.usage) usage = chunk.usage;
    }
    assert.equal(text, ref.text);
    assert.ok(pieces > 5, `streamed in pieces (${pieces})`);
    assert.equal(finish, "length");
    assert.equal(usage?.completion_tokens, TOKENS);
    assert.equal(usage?.prompt_tokens, ref.prompt_tokens);

    // chat, one answer
    const chat = await client.chat.completions.create({
      model: "kjv",
      messages,
      max_tokens: TOKENS,
      temperature: 0,
    });
    assert.equal(chat.choices[0].message.role, "assistant");
    assert.equal(chat.choices[0].message.content, chatRef.text);
    assert.equal(chat.usage?.prompt_tokens, chatRef.prompt_tokens);
    assert.equal(chat.usage?.completion_tokens, chatRef.ids.length);

    // chat, streamed, usage without asking for it (in the finish chunk)
    const cs = await client.chat.completions.create({
      model: "kjv",
      messages,
      max_tokens: TOKENS,
      temperature: 0,
      stream: true,
    });
    let chatText = "", role = "", chatFinish: string | null = null;
    let chatUsage: OpenAI.CompletionUsage | null | undefined = null;
    for await (const chunk of cs) {
      for (const ch of chunk.choices) {
        chatText += ch.delta.content ?? "";
        role = ch.delta.role ?? role;
        chatFinish = ch.finish_reason ?? chatFinish;
      }
      if (chunk.usage) chatUsage = chunk.usage;
    }
    assert.equal(chatText, chatRef.text);
    assert.equal(role, "assistant");
    assert.equal(chatFinish, "length");
    assert.equal(chatUsage?.total_tokens, chatRef.prompt_tokens + chatRef.ids.length);

    // seeded sampling with top_p and a stop string: the same draw as generate's
    const sc = await client.completions.create({
      model: "kjv",
      prompt: PROMPT,
      max_tokens: 40,
      temperature: 0.9,
      top_p: 0.95,
      seed: 7,
      stop: ["fire", "Zion"],
    });
    assert.equal(sc.choices[0].text, sampled.text);
    assert.equal(sc.choices[0].finish_reason, "stop");
    assert.equal(sc.usage?.completion_tokens, sampled.ids.length);
  } finally {
    await server.stop();
  }
  const done = server.logs.filter((r) => r.path === "/v1/completions" && r.status === 200);
  assert.equal(done.length, 3, "one log line per completion request");
});
