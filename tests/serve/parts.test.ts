// The server's pure parts, in process: chat template rendering (bos/eos tokens, the generation
// prompt, text parts, no template, a failing template), Range parsing, and request validation.
import assert from "node:assert/strict";
import { ChatTemplate } from "../../src/serve/chat.ts";
import { ApiError } from "../../src/serve/errors.ts";
import { parseRange } from "../../src/serve/files.ts";
import { ChatRequest, CompletionRequest, parseBody } from "../../src/serve/schema.ts";
import { KJV, withChatTemplate } from "./server.ts";

Deno.test("chat template: bos/eos, generation prompt, text parts; none is null", async () => {
  assert.equal(await ChatTemplate.load(KJV), null, "kjv-llama has no chat template");
  const dir = await withChatTemplate(
    KJV,
    "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}" +
      "{% if add_generation_prompt %}<assistant>{% endif %}",
  );
  const t = (await ChatTemplate.load(dir))!;
  assert.equal(
    t.render([
      { role: "system", content: "Be brief." },
      {
        role: "user",
        content: [{ type: "text", text: "In the " }, { type: "text", text: "beginning" }],
      },
    ]),
    "<|begin_of_text|><system>Be brief.<|end_of_text|><user>In the beginning<|end_of_text|><assistant>",
  );
  const bad = await withChatTemplate(KJV, "{{ raise_exception('no system role') }}");
  const failing = (await ChatTemplate.load(bad))!;
  assert.throws(() => failing.render([{ role: "user", content: "x" }]), (e) => {
    assert.ok(e instanceof ApiError && e.status === 400 && e.param === "messages", String(e));
    return true;
  });
});

Deno.test("Range headers: single ranges, suffixes, clamping, unsatisfiable, ignored forms", () => {
  assert.equal(parseRange(null, 100), null);
  assert.deepEqual(parseRange("bytes=0-9", 100), [0, 9]);
  assert.deepEqual(parseRange("bytes=90-", 100), [90, 99]);
  assert.deepEqual(parseRange("bytes=-10", 100), [90, 99]);
  assert.deepEqual(parseRange("bytes=-500", 100), [0, 99]);
  assert.deepEqual(parseRange("bytes=50-5000", 100), [50, 99]);
  assert.equal(parseRange("bytes=100-", 100), "bad");
  assert.equal(parseRange("bytes=9-3", 100), "bad");
  assert.equal(parseRange("bytes=-0", 100), "bad");
  assert.equal(parseRange("bytes=x-y", 100), "bad");
  assert.equal(parseRange("bytes=0-1,5-6", 100), null, "several ranges: the whole file");
  assert.equal(parseRange("items=0-1", 100), null, "another unit: the whole file");
});

Deno.test("request validation names the field", () => {
  const err = (f: () => unknown) => {
    try {
      f();
    } catch (e) {
      assert.ok(e instanceof ApiError && e.status === 400);
      return e;
    }
    throw new Error("no error");
  };
  assert.equal(parseBody(CompletionRequest, { prompt: "x", stop: "a" }).stop, "a");
  assert.equal(err(() => parseBody(CompletionRequest, { prompt: "x", top_p: 0 })).param, "top_p");
  assert.equal(err(() => parseBody(CompletionRequest, { prompt: "x", seed: 1.5 })).param, "seed");
  assert.equal(err(() => parseBody(CompletionRequest, { prompt: ["a", "b"] })).param, "prompt");
  assert.equal(
    err(() => parseBody(CompletionRequest, { prompt: "x", stream: "yes" })).param,
    "stream",
  );
  const missing = err(() => parseBody(ChatRequest, {}));
  assert.equal(missing.param, "messages");
  assert.equal(missing.code, "missing_required_parameter");
  assert.equal(
    err(() => parseBody(ChatRequest, { messages: [{ role: "wizard", content: "x" }] })).param,
    "messages.0.role",
  );
  assert.equal(err(() => parseBody(ChatRequest, "text")).param, null);
});
