// `generate` on a compressed folder whose codes do not match its quantization_config (a code >= n,
// a stream of the wrong length): one error line naming the tensor, a non-zero exit, nothing
// generated. On the embedded kjv-llama.
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { compressedFolder } from "../model/compressed_folder.ts";
import { runTask } from "../pipeline/run.ts";
import { assertOneErrorLine } from "./errors.ts";
import { decodeSafetensors, writeSafetensors } from "../../src/io/safetensors.ts";

const KJV = fileURLToPath(new URL("../../fixtures/kjv-llama", import.meta.url));
// q_proj: n = 37, 6-bit codes, so the stream can hold codes 37 .. 63.
const Q = "model.layers.1.self_attn.q_proj";

/** A copy of the compressed kjv-llama folder with the tensor `name` edited in its shard. */
async function brokenFolder(name: string, edit: (data: Uint8Array) => Uint8Array): Promise<string> {
  const src = await compressedFolder(KJV);
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-badcodes-" });
  for await (const e of Deno.readDir(src)) {
    await Deno.copyFile(`${src}/${e.name}`, `${dir}/${e.name}`);
  }
  const map = JSON.parse(await Deno.readTextFile(`${dir}/model.safetensors.index.json`)).weight_map;
  const shard = `${dir}/${map[name]}`;
  const tensors = decodeSafetensors(await Deno.readFile(shard), shard);
  const t = tensors.find((x) => x.name === name)!;
  t.data = edit(t.data.slice());
  t.shape = [t.data.length];
  await writeSafetensors(shard, tensors, { format: "pt" });
  return dir;
}

async function assertRefused(dir: string, ...needles: string[]): Promise<void> {
  const r = await runTask("generate", ["--model", dir, "--prompt", "In the beginning", "--quiet"]);
  assertOneErrorLine(r, ...needles);
}

Deno.test("generate refuses a folder whose packed codes hold a code >= n", async () => {
  const qc = JSON.parse(await Deno.readTextFile(`${await compressedFolder(KJV)}/config.json`))
    .quantization_config;
  assert.deepEqual([qc.modules[Q].n, qc.modules[Q].code_bits], [37, 6]);
  // The last code of the stream (bits 6 * (count - 1) ..) set to 63.
  const dir = await brokenFolder(`${Q}.codes`, (data) => {
    const count = Math.floor((data.length * 8) / 6);
    const bit = 6 * (count - 1);
    for (let b = 0; b < 6; b++) data[(bit + b) >> 3] |= 1 << ((bit + b) & 7);
    return data;
  });
  await assertRefused(dir, `${Q}.codes`, ">= n");
});

Deno.test("generate refuses a folder whose packed codes are one byte short", async () => {
  const dir = await brokenFolder(`${Q}.codes`, (data) => data.subarray(0, data.length - 1));
  await assertRefused(dir, `${Q}.codes`);
});
