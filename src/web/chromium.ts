/// <reference lib="dom" />
// Drives the page in headless Chromium (playwright-core; Deno side, for the browser test and the
// web benchmark): WebGPU on Chromium's software Vulkan (SwiftShader) where there is no GPU.
import { existsSync } from "node:fs";
import { type Browser, chromium, type Page } from "playwright-core";

/**
 * Flags that give navigator.gpu an adapter in headless Chromium 156 on a machine without a GPU
 * (SwiftShader's Vulkan; measured here). --enable-unsafe-webgpu alone already gives it; the rest
 * keep it from depending on the GPU blocklist or a GL-backed default.
 */
export const CHROMIUM_FLAGS = [
  "--enable-unsafe-webgpu",
  "--ignore-gpu-blocklist",
  "--enable-features=Vulkan",
  "--use-vulkan=swiftshader",
];

const CANDIDATES = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"];

/** The Chromium binary: $CLUSCOMP_CHROMIUM, or Debian's chromium; null when there is none. */
export function findChromium(): string | null {
  const env = Deno.env.get("CLUSCOMP_CHROMIUM");
  if (env) return existsSync(env) ? env : null;
  return CANDIDATES.find((p) => existsSync(p)) ?? null;
}

export function launchChromium(executablePath: string): Promise<Browser> {
  return chromium.launch({ executablePath, headless: true, args: CHROMIUM_FLAGS });
}

/** What the page's WebGPU gives: an adapter's vendor and architecture, or why there is none. */
export async function probeWebGpu(page: Page): Promise<{ ok: boolean; detail: string }> {
  return await page.evaluate(async () => {
    const gpu = (navigator as Navigator & { gpu?: GPU }).gpu;
    if (!gpu) return { ok: false, detail: `no navigator.gpu (secure context: ${isSecureContext})` };
    const a = await gpu.requestAdapter();
    if (!a) return { ok: false, detail: "navigator.gpu.requestAdapter() gave null" };
    const i = a.info;
    return { ok: true, detail: `${i.vendor} ${i.architecture} ${i.description}`.trim() };
  });
}

export interface PageRun {
  /** #status's data-state at the end: "done" or "error". */
  state: string;
  /** #status's text (the error message when state is "error"). */
  status: string;
  /** The generated text (#output). */
  text: string;
  /** #stats's data-* (mode, tokens, tokensPerS, ttftMs, gpuBytes). */
  stats: Record<string, string>;
  statsText: string;
  /** Wall time from the click to the end, ms. */
  ms: number;
}

/** Opens the page at `url` and waits until its script is up (adapter probed, button wired). */
export async function openPage(browser: Browser, url: string, log?: (s: string) => void) {
  const page = await browser.newPage();
  page.on("console", (m) => log?.(`console.${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => log?.(`pageerror: ${e.message}`));
  await page.goto(url);
  await page.waitForSelector("#status[data-state=idle]", { timeout: 60_000 });
  return page;
}

/** Types the prompt, picks this page's GPU or the server, clicks Generate, waits for the end. */
export async function runPage(
  page: Page,
  opts: { prompt: string; maxTokens: number; server: boolean; timeoutMs?: number },
): Promise<PageRun> {
  await page.fill("#prompt", opts.prompt);
  await page.fill("#max-tokens", String(opts.maxTokens));
  await page.fill("#temperature", "0");
  await page.setChecked("#use-server", opts.server);
  const t0 = performance.now();
  await page.click("#generate");
  await page.waitForSelector("#status[data-state=done], #status[data-state=error]", {
    timeout: opts.timeoutMs ?? 600_000,
  });
  const ms = performance.now() - t0;
  return await page.evaluate((ms) => {
    const el = (id: string) => document.getElementById(id)!;
    return {
      state: el("status").dataset.state ?? "",
      status: el("status").textContent ?? "",
      text: el("output").textContent ?? "",
      stats: { ...el("stats").dataset } as Record<string, string>,
      statsText: el("stats").textContent ?? "",
      ms,
    };
  }, ms);
}
