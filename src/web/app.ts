/// <reference lib="dom" />
// The browser page's script (bundled by tasks/build_web.ts into src/web/bundle.gen.ts): loads the
// compressed folder the server publishes under /model/ (by HTTP range, tensor by tensor), runs it
// on the page's own WebGPU adapter with the same model, kernels and runner as the CLI, and streams
// the text into the page; the "server" switch sends the same prompt to POST /v1/completions
// (stream: true) instead. Element ids are in src/web/page.ts.
import { getGpu, type Gpu } from "../gpu/device.ts";
import { TextStream } from "../io/detok.ts";
import { HttpSource } from "../io/source.ts";
import { Tokenizer } from "../io/tokenizer.ts";
import { openModel } from "../format/open.ts";
import { generate, Runner } from "../model/runner.ts";

interface Loaded {
  gpu: Gpu;
  tok: Tokenizer;
  runner: Runner;
  source: HttpSource;
  loadMs: number;
}

/** What one run reports (also set as data-* on #stats, for tests). */
export interface RunStats {
  mode: "browser" | "server";
  tokens: number;
  /** Decode tokens/s (tokens after the first over the time after the first). */
  tokensPerS: number;
  ttftMs: number;
  gpuBytes: number | null;
}

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

let loading: Promise<Loaded> | null = null;

/** The bearer token a server started with --api-key wants (on /model/ and /v1/), if typed. */
function auth(): Record<string, string> {
  const key = $<HTMLInputElement>("api-key").value.trim();
  return key ? { authorization: `Bearer ${key}` } : {};
}

function setStatus(state: string, text: string): void {
  const el = $("status");
  el.dataset.state = state;
  el.textContent = text;
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

/** Opens /model/ and puts the model on this page's WebGPU device (once). */
function load(): Promise<Loaded> {
  loading ??= (async () => {
    const t0 = performance.now();
    const source = new HttpSource(
      new URL("model/", location.href).href,
      (input, init) => fetch(input, { ...init, headers: { ...init?.headers, ...auth() } }),
    );
    setStatus("loading", "opening the model folder ...");
    const model = await openModel(source);
    const tok = await Tokenizer.loadFrom(source);
    const gpu = await getGpu();
    setStatus("loading", `loading ${model.cfg.layers} blocks onto the GPU ...`);
    const runner = await Runner.create(gpu, model.cfg, model.source);
    const loadMs = performance.now() - t0;
    $("model").textContent = `${model.quant ? model.quant.quant_method : "dense"}, ` +
      `${model.cfg.layers} layers, ${mib(source.bytesRead)} fetched in ${
        (loadMs / 1000).toFixed(1)
      } s`;
    return { gpu, tok, runner, source, loadMs };
  })();
  loading.catch(() => (loading = null));
  return loading;
}

async function runBrowser(
  prompt: string,
  maxTokens: number,
  temperature: number,
  out: (s: string) => void,
): Promise<RunStats> {
  const m = await load();
  setStatus("running", "generating on this page's GPU ...");
  const ids = m.tok.encode(prompt, { addBos: true });
  const stream = new TextStream(m.tok, ids);
  let count = 0, tFirst = 0;
  const r = await generate(m.runner, ids, {
    maxNewTokens: maxTokens,
    temperature,
    topK: 0,
    topP: 1,
    seed: 0,
    eosId: m.tok.eosId,
    onToken: (id) => {
      const piece = stream.push(id);
      if (piece) out(piece);
      // Live figures while it runs (the final ones replace them).
      const now = performance.now();
      if (count++ === 0) tFirst = now;
      const rate = count > 1 ? ((count - 1) / (now - tFirst)) * 1000 : 0;
      $("stats").textContent = `browser: ${count} tokens, ${rate.toFixed(2)} tokens/s, ` +
        `GPU memory ${mib(m.gpu.bytesLive)}`;
    },
  });
  const rest = stream.flush();
  if (rest) out(rest);
  return {
    mode: "browser",
    tokens: r.ids.length,
    tokensPerS: r.decodeTokensPerS,
    ttftMs: r.ttftMs,
    gpuBytes: m.gpu.bytesPeak,
  };
}

async function runServer(
  prompt: string,
  maxTokens: number,
  temperature: number,
  out: (s: string) => void,
): Promise<RunStats> {
  setStatus("running", "generating on the server ...");
  const t0 = performance.now();
  const res = await fetch(new URL("v1/completions", location.href), {
    method: "POST",
    headers: { "content-type": "application/json", ...auth() },
    body: JSON.stringify({ prompt, max_tokens: maxTokens, temperature, seed: 0, stream: true }),
  });
  if (!res.ok || !res.body) {
    const body = await res.text();
    throw new Error(`POST /v1/completions: HTTP ${res.status} ${body.slice(0, 300)}`);
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let tokens = 0;
  let tFirst = 0;
  let tLast = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(`server: ${chunk.error.message ?? JSON.stringify(chunk)}`);
        const text: string | undefined = chunk.choices?.[0]?.text;
        if (chunk.usage?.completion_tokens !== undefined) tokens = chunk.usage.completion_tokens;
        if (text) {
          const now = performance.now();
          if (tFirst === 0) tFirst = now;
          tLast = now;
          out(text);
        }
      }
    }
  }
  // Pieces are not tokens one for one; usage gives the token count.
  const span = (tLast - tFirst) / 1000;
  return {
    mode: "server",
    tokens,
    tokensPerS: tokens > 1 && span > 0 ? (tokens - 1) / span : 0,
    ttftMs: tFirst ? tFirst - t0 : 0,
    gpuBytes: null,
  };
}

async function onGenerate(): Promise<void> {
  const button = $<HTMLButtonElement>("generate");
  const output = $("output");
  const stats = $("stats");
  const prompt = $<HTMLTextAreaElement>("prompt").value;
  const maxTokens = Number($<HTMLInputElement>("max-tokens").value);
  const temperature = Number($<HTMLInputElement>("temperature").value);
  const mode = $<HTMLInputElement>("use-server").checked ? "server" : "browser";
  button.disabled = true;
  output.textContent = "";
  stats.textContent = "";
  delete stats.dataset.tokensPerS;
  try {
    if (prompt.trim() === "") throw new Error("the prompt is empty");
    if (!(Number.isInteger(maxTokens) && maxTokens >= 1)) {
      throw new Error("max tokens must be a positive integer");
    }
    if (!(temperature >= 0)) throw new Error("temperature must be a number >= 0");
    const out = (s: string) => output.append(s);
    const r = mode === "browser"
      ? await runBrowser(prompt, maxTokens, temperature, out)
      : await runServer(prompt, maxTokens, temperature, out);
    stats.dataset.mode = r.mode;
    stats.dataset.tokens = String(r.tokens);
    stats.dataset.tokensPerS = r.tokensPerS.toFixed(3);
    stats.dataset.ttftMs = r.ttftMs.toFixed(1);
    if (r.gpuBytes !== null) stats.dataset.gpuBytes = String(r.gpuBytes);
    stats.textContent = `${r.mode}: ${r.tokens} tokens, ${r.tokensPerS.toFixed(2)} tokens/s ` +
      `(decode), first token after ${r.ttftMs.toFixed(0)} ms` +
      (r.gpuBytes !== null ? `, GPU memory ${mib(r.gpuBytes)}` : "");
    setStatus("done", "done");
  } catch (e) {
    setStatus("error", (e as Error).message);
    console.error(e);
  } finally {
    button.disabled = false;
  }
}

/** Shows the adapter (or why there is none) and wires the button. */
async function start(): Promise<void> {
  $("generate").addEventListener("click", () => void onGenerate());
  const gpu = (navigator as Navigator & { gpu?: GPU }).gpu;
  const adapter = gpu ? await gpu.requestAdapter() : null;
  const info = adapter?.info;
  $("adapter").textContent = adapter
    ? [info?.vendor, info?.architecture, info?.description].filter((s) => s).join(" ") ||
      "unnamed adapter"
    : "none: this browser gives no WebGPU adapter (use the server switch)";
  $("adapter").dataset.available = adapter ? "yes" : "no";
  setStatus("idle", "ready");
}

void start();
