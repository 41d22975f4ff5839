// HttpSource (the page's reader: fetch with Range) against DirSource (the CLI's) on the same
// folder: the same tensors, config, tokenizer and quantization config; and clear errors for a
// missing file, a short answer, an HTTP error and a bad file list.
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { UserError } from "../../src/errors.ts";
import { openModel } from "../../src/format/open.ts";
import { type FileSource, HttpSource } from "../../src/io/source.ts";
import { SafetensorsIndex } from "../../src/io/safetensors.ts";
import { Tokenizer } from "../../src/io/tokenizer.ts";
import { compressedFolder } from "../model/compressed_folder.ts";

const KJV = fileURLToPath(new URL("../../fixtures/kjv-llama", import.meta.url));

interface Mode {
  /** Honour Range (206) or ignore it (200, whole file). */
  ranges: boolean;
  /** Drop the last byte of every ranged answer (a broken server). */
  short?: boolean;
  /** Answer /files with this text instead of the list. */
  files?: string;
}

/** Serves `dir` as the page's server does: /model/files and /model/<name> with Range. */
async function serveFolder(dir: string, mode: Mode) {
  const names: { name: string; size: number }[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile) names.push({ name: e.name, size: (await Deno.stat(`${dir}/${e.name}`)).size });
  }
  const requests: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const path = new URL(req.url).pathname;
    const range = req.headers.get("range");
    requests.push(`${path} ${range ?? ""}`);
    if (path === "/model/files") return new Response(mode.files ?? JSON.stringify(names));
    const name = decodeURIComponent(path.slice("/model/".length));
    if (!names.some((n) => n.name === name)) return new Response("no", { status: 404 });
    const bytes = await Deno.readFile(`${dir}/${name}`);
    const m = range && mode.ranges ? /^bytes=(\d+)-(\d+)$/.exec(range) : null;
    if (!m) return new Response(bytes);
    const end = Number(m[2]) + 1 - (mode.short ? 1 : 0);
    return new Response(bytes.slice(Number(m[1]), end), { status: 206 });
  });
  const url = `http://127.0.0.1:${server.addr.port}/model/`;
  return { url, requests, close: () => server.shutdown() };
}

async function sameTensors(dir: string, src: FileSource): Promise<number> {
  const a = await SafetensorsIndex.open(dir);
  const b = await SafetensorsIndex.open(src);
  try {
    assert.deepEqual(b.names(), a.names());
    for (const name of a.names()) {
      const [x, y] = [a.info(name), b.info(name)];
      assert.deepEqual([y.dtype, y.shape, y.offset], [x.dtype, x.shape, x.offset], name);
      assert.deepEqual(await b.readRaw(name), await a.readRaw(name), name);
    }
    return a.names().length;
  } finally {
    a.close();
    b.close();
  }
}

Deno.test("HttpSource reads a compressed and a dense folder as the disk reader does", async () => {
  const folder = await compressedFolder(KJV);
  for (const dir of [folder, KJV]) {
    for (const ranges of [true, false]) {
      const s = await serveFolder(dir, { ranges });
      try {
        const src = new HttpSource(s.url);
        const n = await sameTensors(dir, src);
        assert.ok(n > 0);
        const [disk, web] = [await openModel(dir), await openModel(src)];
        assert.deepEqual(web.cfg, disk.cfg);
        assert.deepEqual(web.quant, disk.quant);
        assert.equal(web.dir, s.url);
        const tw = await Tokenizer.load(src), td = await Tokenizer.load(dir);
        const text = "In the beginning God created the heaven and the earth.";
        assert.deepEqual(tw.encode(text, { addBos: true }), td.encode(text, { addBos: true }));
        assert.equal(tw.eosId, td.eosId);
        disk.index.close();
        if (ranges) {
          // Tensor by tensor, by range: no whole-file GET of a safetensors file.
          const whole = s.requests.filter((r) => /\.safetensors $/.test(r));
          assert.deepEqual(whole, []);
        }
      } finally {
        await s.close();
      }
    }
  }
});

Deno.test("HttpSource: missing file, short answer, HTTP error and bad list are UserErrors", async () => {
  const short = await serveFolder(KJV, { ranges: true, short: true });
  try {
    await assert.rejects(
      () => SafetensorsIndex.open(new HttpSource(short.url)),
      (e) =>
        e instanceof UserError &&
        /model\.safetensors: asked for 8 bytes at 0, got 7/.test(e.message),
    );
    const src = new HttpSource(short.url);
    await assert.rejects(
      () => src.read("nope.bin", 0, 4),
      (e) => e instanceof UserError && /nope\.bin: not in the folder's file list/.test(e.message),
    );
    await assert.rejects(
      () => src.read("config.json", 10, 1 << 20),
      (e) => e instanceof UserError && /config\.json: bytes \[10, \d+\) past \d+/.test(e.message),
    );
    assert.equal(await src.text("nope.json"), null);
  } finally {
    await short.close();
  }
  const bad = await serveFolder(KJV, { ranges: true, files: '{"name": 1}' });
  try {
    await assert.rejects(
      () => openModel(new HttpSource(bad.url)),
      (e) => e instanceof UserError && /\/model\/files: not a JSON list/.test(e.message),
    );
  } finally {
    await bad.close();
  }
  const gone = await serveFolder(KJV, { ranges: true });
  const url = gone.url.replace("/model/", "/elsewhere/");
  try {
    await assert.rejects(
      () => openModel(new HttpSource(url)),
      (e) => e instanceof UserError && /elsewhere\/files: HTTP 404/.test(e.message),
    );
  } finally {
    await gone.close();
  }
});
