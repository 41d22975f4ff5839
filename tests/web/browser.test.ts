// The page in a real browser: headless Chromium (WebGPU on its software Vulkan, SwiftShader)
// opens the page from `deno task serve` on the compressed kjv-llama, generates 32 greedy tokens
// on its own WebGPU adapter and through the server switch (POST /v1/completions, streamed); both
// texts equal `deno task generate`'s. A screenshot of each run is saved under a temp folder
// (printed). Without Chromium, or with a Chromium that gives no adapter, the in-browser part is
// skipped with the reason, except under CI (CI=true), where both are required.
import assert from "node:assert/strict";
import type { Browser } from "playwright-core";
import {
  findChromium,
  launchChromium,
  openPage,
  probeWebGpu,
  runPage,
} from "../../src/web/chromium.ts";
import { compressedKjv, generateJson, startServer } from "../serve/server.ts";

const PROMPT = "In the beginning";
const TOKENS = 32;
const CI = Deno.env.get("CI") === "true";
const chrome = findChromium();
if (!chrome && !CI) {
  console.error(
    "tests/web/browser.test.ts: skipped, no Chromium (apt-get install chromium, or set " +
      "CLUSCOMP_CHROMIUM)",
  );
}

const PNG = [0x89, 0x50, 0x4e, 0x47];

Deno.test({
  name: "the page generates kjv-llama's greedy text in Chromium, on its GPU and via the server",
  ignore: !chrome && !CI,
  sanitizeOps: false,
  sanitizeResources: false,
}, async (t) => {
  assert.ok(chrome, "no Chromium found (CI needs apt-get install chromium; see .ci/run)");
  const folder = await compressedKjv();
  const ref = await generateJson(folder, PROMPT, TOKENS);
  assert.equal(ref.ids.length, TOKENS, "the reference generates all 32 tokens");
  const shots = await Deno.makeTempDir({ prefix: "cluscomp-web-shots-" });
  const server = await startServer(["--model", folder]);
  const log: string[] = [];
  let browser: Browser | null = null;
  try {
    browser = await launchChromium(chrome);
    const page = await openPage(browser, `${server.url}/`, (s) => log.push(s));
    const gpu = await probeWebGpu(page);
    console.log(`page WebGPU: ${gpu.ok ? "adapter" : "none"}: ${gpu.detail}`);
    const why = () => `${log.slice(-20).join("\n")}`;

    await t.step("server switch: POST /v1/completions streamed into the page", async () => {
      const r = await runPage(page, { prompt: PROMPT, maxTokens: TOKENS, server: true });
      assert.equal(r.state, "done", `${r.status}\n${why()}`);
      assert.equal(r.text, ref.text, "server text in the page equals deno task generate's");
      assert.equal(r.stats.mode, "server");
      assert.equal(Number(r.stats.tokens), TOKENS);
      await page.screenshot({ path: `${shots}/server.png`, fullPage: true });
    });

    await t.step("on the page's own WebGPU adapter", async () => {
      if (!gpu.ok) {
        assert.ok(!CI, `CI: Chromium gives no WebGPU adapter: ${gpu.detail}`);
        console.error(`in-browser generation skipped: ${gpu.detail}`);
        return;
      }
      const r = await runPage(page, { prompt: PROMPT, maxTokens: TOKENS, server: false });
      const shot = `${shots}/browser.png`;
      await page.screenshot({ path: shot, fullPage: true });
      console.log(`screenshot: ${shot}\n${r.statsText} (${(r.ms / 1000).toFixed(1)} s)`);
      assert.equal(r.state, "done", `${r.status}\n${why()}`);
      assert.equal(r.text, ref.text, "page text equals deno task generate's");
      assert.equal(r.stats.mode, "browser");
      assert.equal(Number(r.stats.tokens), TOKENS);
      assert.ok(Number(r.stats.tokensPerS) > 0, "tokens/s shown");
      assert.ok(Number(r.stats.gpuBytes) > 0, "GPU memory shown");
      const png = await Deno.readFile(shot);
      assert.deepEqual([...png.subarray(0, 4)], PNG, "the screenshot is a PNG");
      assert.ok(png.length > 5000, `the screenshot has content (${png.length} bytes)`);
    });
  } finally {
    await browser?.close();
    await server.stop();
  }
});

Deno.test({
  name: "the page sends the API key it is given to a server started with --api-key",
  ignore: !chrome && !CI,
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  assert.ok(chrome, "no Chromium found (CI needs apt-get install chromium; see .ci/run)");
  const folder = await compressedKjv();
  const server = await startServer(["--model", folder, "--api-key", "sesame"]);
  let browser: Browser | null = null;
  try {
    browser = await launchChromium(chrome);
    const page = await openPage(browser, `${server.url}/`);
    const opts = { prompt: PROMPT, maxTokens: 4, server: true };
    const without = await runPage(page, opts);
    assert.equal(without.state, "error");
    assert.match(without.status, /HTTP 401/);
    await page.fill("#api-key", "sesame");
    const withKey = await runPage(page, opts);
    assert.equal(withKey.state, "done", withKey.status);
    assert.equal(Number(withKey.stats.tokens), 4);
  } finally {
    await browser?.close();
    await server.stop();
  }
});
