// ClusComp without finetuning against RTN at the same bits per weight (overheads included) on
// WikiText-2 (seqlen 128, first 64 windows). RTN runs first; ClusComp then gets RTN's measured
// bits as its budget (d = 2, k-means++ init). On stories260K ClusComp must win at about 3 and
// 2.3 bits; at about 4 bits the two are within noise on this fixture (see the issue note), so
// that row is printed, not asserted. The tinyllama table is printed as evidence.
import assert from "node:assert/strict";
import { Progress } from "../../src/pipeline/progress.ts";
import { compress, type CompressSettings } from "../../src/pipeline/compress.ts";
import { HAS_SHARED, STORIES, TINYLLAMA, WIKI } from "../shared.ts";

const RTN = [{ bits: 4, group: 128 }, { bits: 3, group: 128 }, { bits: 2, group: 32 }];

function settings(
  model: string,
  out: string,
  method: "cluscomp" | "rtn",
  bits: number,
  rtn: { bits: number; group: number },
): CompressSettings {
  return {
    model,
    out,
    work: `${out}.work`,
    method,
    cluster: {
      bits,
      d: 2,
      overrides: {},
      splits: 1,
      codebookDtype: "f16",
      iters: 20,
      seed: 0,
      init: "kmeans++",
      restarts: 1,
    },
    rtn,
    eval: { text: WIKI, seqlen: 128, maxWindows: 64 },
    gpuBudget: 2 ** 31,
  };
}

interface Row {
  bits: number;
  cluscomp: number;
  rtnBits: number;
  rtn: number;
  original: number;
}

async function table(model: string): Promise<Row[]> {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-vs-rtn-" });
  const quiet = new Progress(true);
  const rows: Row[] = [];
  for (const rtn of RTN) {
    const r = await compress(settings(model, `${dir}/r${rtn.bits}`, "rtn", rtn.bits, rtn), quiet);
    const c = await compress(
      settings(model, `${dir}/c${rtn.bits}`, "cluscomp", r.bits_per_weight, rtn),
      quiet,
    );
    rows.push({
      bits: c.bits_per_weight,
      cluscomp: c.ppl_compressed!,
      rtnBits: r.bits_per_weight,
      rtn: r.ppl_compressed!,
      original: c.ppl_original!,
    });
  }
  await Deno.remove(dir, { recursive: true });
  const name = model.split("/").pop();
  console.log(
    `\n${name}: wiki ppl, seqlen 128, 64 windows (original ${rows[0].original.toFixed(3)})`,
  );
  console.log("| ClusComp bits | ClusComp ppl | RTN bits | RTN ppl |");
  console.log("| --- | --- | --- | --- |");
  for (const r of rows) {
    console.log(
      `| ${r.bits.toFixed(3)} | ${r.cluscomp.toFixed(3)} | ${r.rtnBits.toFixed(3)} | ${
        r.rtn.toFixed(3)
      } |`,
    );
  }
  return rows;
}

Deno.test({
  name: "stories260K: ClusComp beats RTN at the same bits (about 3 and 2.3 bits)",
  ignore: !HAS_SHARED,
  fn: async () => {
    const rows = await table(STORIES);
    for (const r of rows) {
      assert.ok(r.bits <= r.rtnBits, `ClusComp ${r.bits} > RTN ${r.rtnBits} bits`);
    }
    for (const r of rows.slice(1)) {
      assert.ok(
        r.cluscomp < r.rtn,
        `at ${r.bits.toFixed(2)} bits ClusComp ${r.cluscomp} vs RTN ${r.rtn}`,
      );
    }
  },
});

Deno.test({
  name: "tinyllama: the ClusComp / RTN table at about 4, 3 and 2.3 bits (printed)",
  ignore: !HAS_SHARED,
  fn: async () => {
    // (Compression can lower this model's wiki perplexity slightly: wiki is out of its domain.)
    for (const r of await table(TINYLLAMA)) {
      assert.ok(r.bits <= r.rtnBits, `ClusComp ${r.bits} > RTN ${r.rtnBits} bits`);
      assert.ok(Number.isFinite(r.cluscomp) && Number.isFinite(r.rtn));
    }
  },
});
