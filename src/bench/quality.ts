// Quality against RTN: ClusComp without finetuning and RTN at the same bits per weight
// (overheads included), WikiText-2 perplexity (seqlen 128, first 64 windows). RTN runs first;
// ClusComp then gets RTN's measured bits as its budget, counted as stored (d = 2, k-means++ init).
import { compress, type CompressSettings } from "../pipeline/compress.ts";
import { Progress } from "../util/progress.ts";

export interface RtnSetting {
  bits: number;
  group: number;
}

/** About 4, 3 and 2.3 bits per weight. */
export const RTN_SETTINGS: RtnSetting[] = [
  { bits: 4, group: 128 },
  { bits: 3, group: 128 },
  { bits: 2, group: 32 },
];

export interface QualityRow {
  name: "quality";
  model: string;
  rtn_setting: string;
  cluscomp_bits: number;
  /** As stored: codes packed at ceil(log2 n) bits (what the budget bounds). */
  cluscomp_stored_bits: number;
  cluscomp_ppl: number;
  rtn_bits: number;
  rtn_ppl: number;
  original_ppl: number;
  seqlen: number;
  windows: number;
}

function settings(
  model: string,
  out: string,
  method: "cluscomp" | "rtn",
  bits: number,
  rtn: RtnSetting,
  text: string,
  maxWindows: number,
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
    eval: { text, seqlen: 128, maxWindows },
    gpuBudget: 2 ** 31,
  };
}

/** One row per RTN setting: RTN, then ClusComp at RTN's bits, both evaluated on `text`. */
export async function qualityRows(
  model: string,
  text: string,
  rtnSettings: RtnSetting[] = RTN_SETTINGS,
  maxWindows = 64,
  onRow?: (r: QualityRow) => void,
): Promise<QualityRow[]> {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-quality-" });
  const quiet = new Progress(true);
  const rows: QualityRow[] = [];
  try {
    for (const rtn of rtnSettings) {
      const tag = `${rtn.bits}-${rtn.group}`;
      const r = await compress(
        settings(model, `${dir}/r${tag}`, "rtn", rtn.bits, rtn, text, maxWindows),
        quiet,
      );
      const c = await compress(
        settings(model, `${dir}/c${tag}`, "cluscomp", r.bits_per_weight, rtn, text, maxWindows),
        quiet,
      );
      const row: QualityRow = {
        name: "quality",
        model: model.split("/").pop()!,
        rtn_setting: `${rtn.bits} bits, group ${rtn.group}`,
        cluscomp_bits: c.bits_per_weight,
        cluscomp_stored_bits: c.stored_bits_per_weight,
        cluscomp_ppl: c.ppl_compressed!,
        rtn_bits: r.bits_per_weight,
        rtn_ppl: r.ppl_compressed!,
        original_ppl: c.ppl_original!,
        seqlen: 128,
        windows: c.eval!.original.windows,
      };
      rows.push(row);
      onRow?.(row);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  return rows;
}
