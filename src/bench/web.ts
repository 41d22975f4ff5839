// Decode speed of the browser page against `deno task generate` on the same machine and folder:
// the page (served in-process: webAsset and /model/ by range) runs greedy generation on headless
// Chromium's WebGPU adapter; the CLI runs on Deno's. Both texts must agree.
import { listFiles, serveModelFile } from "../serve/files.ts";
import { webAsset } from "../web/assets.ts";
import { findChromium, launchChromium, openPage, probeWebGpu, runPage } from "../web/chromium.ts";

const ROOT = new URL("../../", import.meta.url);

/** Serves the page and `folder` under /model/ (GET /model/files, ranges) on a free port. */
function servePage(folder: string): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const path = new URL(req.url).pathname;
    try {
      if (path === "/model/files") return Response.json(await listFiles(folder));
      if (path.startsWith("/model/")) {
        return await serveModelFile(folder, decodeURIComponent(path.slice(7)), req);
      }
    } catch {
      return new Response("not found", { status: 404 });
    }
    const a = webAsset(path);
    return a
      ? new Response(a.body as BodyInit, { headers: { "content-type": a.type } })
      : new Response("not found", { status: 404 });
  });
}

/** `deno task generate --json` (a process of its own, as a user runs it). */
async function generateCli(folder: string, prompt: string, tokens: number) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("tasks/generate.ts", ROOT).pathname,
      "--model",
      folder,
      "--prompt",
      prompt,
      "--max-new-tokens",
      String(tokens),
      "--json",
      "--quiet",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`generate failed: ${new TextDecoder().decode(out.stderr)}`);
  return JSON.parse(new TextDecoder().decode(out.stdout)) as {
    text: string;
    tokens_per_s: number;
    ttft_ms: number;
    generated_tokens: number;
  };
}

export async function benchWeb(
  folder: string,
  prompt: string,
  tokens: number,
): Promise<Record<string, unknown>> {
  const chrome = findChromium();
  if (!chrome) throw new Error("bench web: no Chromium (apt-get install chromium)");
  const cli = await generateCli(folder, prompt, tokens);
  const server = servePage(folder);
  const browser = await launchChromium(chrome);
  try {
    const page = await openPage(browser, `http://127.0.0.1:${server.addr.port}/`);
    const gpu = await probeWebGpu(page);
    if (!gpu.ok) throw new Error(`bench web: the page has no WebGPU adapter: ${gpu.detail}`);
    const r = await runPage(page, { prompt, maxTokens: tokens, server: false });
    if (r.state !== "done") throw new Error(`bench web: the page failed: ${r.status}`);
    const pageTps = Number(r.stats.tokensPerS);
    return {
      name: "web",
      tokens,
      page_adapter: gpu.detail,
      page_decode_tokens_per_s: pageTps,
      page_ttft_ms: Number(r.stats.ttftMs),
      page_gpu_bytes: Number(r.stats.gpuBytes),
      generate_decode_tokens_per_s: cli.tokens_per_s,
      generate_ttft_ms: cli.ttft_ms,
      page_over_generate: pageTps / cli.tokens_per_s,
      same_text: r.text === cli.text,
    };
  } finally {
    await browser.close();
    await server.shutdown();
  }
}
