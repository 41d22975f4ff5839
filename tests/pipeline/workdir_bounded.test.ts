// The work directory stays bounded on the embedded fixtures/kjv-llama (no ../shared): finetuning
// keeps only the activations a resume needs (at most two blocks' during a hand-over, none once
// every block is finished) and drops each block's epoch checkpoint when it finishes. Then a
// finished block whose unit is lost is recomputed from replayed inputs, byte-identical.
import assert from "node:assert/strict";
import { join } from "node:path";
import { compress, type CompressSettings } from "../../src/pipeline/compress.ts";
import { Progress, type ProgressEvent } from "../../src/util/progress.ts";
import { loadConfigFile } from "../../src/io/config.ts";
import { assertSameOutputs } from "./run.ts";
import { quickSettings } from "../settings.ts";

const KJV = new URL("../../fixtures/kjv-llama", import.meta.url).pathname;

/** Every file under `dir` (relative path -> bytes). */
export function filesUnder(dir: string, prefix = ""): Map<string, number> {
  const out = new Map<string, number>();
  for (const e of Deno.readDirSync(join(dir, prefix))) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory) {
      for (const [k, v] of filesUnder(dir, rel)) out.set(k, v);
    } else if (e.isFile) out.set(rel, Deno.statSync(join(dir, rel)).size);
  }
  return out;
}

const sum = (m: Map<string, number>, keep: (f: string) => boolean = () => true) =>
  [...m].filter(([f]) => keep(f)).reduce((a, [, b]) => a + b, 0);
const isActs = (f: string) => f.endsWith(".acts.safetensors");
const isEpoch = (f: string) => f.endsWith(".epoch.safetensors");

/** Keeps every progress event and the work directory's peak (measured at each event). */
export class DiskWatch extends Progress {
  events: ProgressEvent[] = [];
  peakBytes = 0;
  peakActs = 0;
  constructor(readonly work: string) {
    super(true);
  }
  override update(e: ProgressEvent): void {
    this.events.push(e);
    if (e.stage !== "finetune" && e.stage !== "epoch") return;
    if ("step" in e) return;
    const files = filesUnder(this.work);
    this.peakBytes = Math.max(this.peakBytes, sum(files));
    this.peakActs = Math.max(this.peakActs, [...files.keys()].filter(isActs).length);
  }
}

const kjvSettings = (dir: string): CompressSettings =>
  quickSettings(KJV, dir, { bits: 2, d: 2 }, { finetune: true });

Deno.test("kjv-llama: the work directory keeps at most one block's activations, and a lost block is replayed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-bounded-" });
  try {
    const s = kjvSettings(dir);
    const cfg = await loadConfigFile(`${KJV}/config.json`);
    const ft = s.finetune!;
    // One block's activations: student and teacher outputs of every window, f32.
    const oneBlock = 2 * ft.samples * cfg.hidden * ft.seqlen * 4;
    const watch = new DiskWatch(s.work!);
    await compress(s, watch);
    const files = filesUnder(s.work!);
    const acts = [...files.keys()].filter(isActs);
    const cluster = sum(files, (f) => f.startsWith("cluster/"));
    const total = sum(files);
    console.log(
      `work dir: ${total} bytes (${files.size} files: cluster units ${cluster}, ` +
        `activations ${sum(files, isActs)}); peak ${watch.peakBytes} with up to ` +
        `${watch.peakActs} activation files; one block's activations ${oneBlock}`,
    );
    assert.ok(acts.length <= 1, `activation files left: ${acts.join(", ")}`);
    assert.equal([...files.keys()].filter(isEpoch).length, 0, "epoch checkpoints left");
    assert.ok(watch.peakActs <= 2, `${watch.peakActs} blocks' activations at once`);
    // Cluster units, one block's activations, and small files (manifest, finetuned codebooks,
    // the plan cache, hashes): well under another block's activations.
    const bound = cluster + oneBlock + oneBlock / 4;
    assert.ok(total <= bound, `work directory ${total} bytes, bound ${bound}`);
    assert.ok(watch.peakBytes <= cluster + 2 * oneBlock + oneBlock / 2, "peak over two blocks");

    // Block 1's unit lost: its inputs are replayed from the embeddings through block 0, and the
    // output is byte-identical.
    await Deno.remove(`${s.work}/finetune/block-001.safetensors`);
    const again = new DiskWatch(s.work!);
    await compress({ ...s, out: `${dir}/again` }, again);
    const trained = new Set(again.events.filter((e) => e.stage === "epoch").map((e) => e.block));
    assert.deepEqual([...trained], [1], "only block 1 is trained again");
    await assertSameOutputs(`${dir}/out`, `${dir}/again`);
    assert.equal([...filesUnder(s.work!).keys()].filter(isActs).length, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
