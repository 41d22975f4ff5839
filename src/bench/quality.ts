// Quality. qualityRows: ClusComp without finetuning and RTN at the same bits per weight
// (overheads included), WikiText-2 perplexity (seqlen 128, first 64 windows); RTN runs first and
// ClusComp gets RTN's measured bits as its budget, counted as stored (d = 2, k-means++ init).
// qualityTable: RTN, GPTQ and ClusComp (plain and activation-aware, with and without block
// finetuning) at about 4, 3, 2.3 and 2 bits, WikiText-2 and held-out TinyStories perplexity.
import { join } from "node:path";
import { evaluatePerplexity } from "../eval/perplexity.ts";
import { type LinearKind, linearNames, loadConfig, type ModelConfig } from "../io/config.ts";
import { defaultLr } from "../finetune/calib.ts";
import { rtnBits } from "../cluster/rtn.ts";
import { methods } from "../method/mod.ts";
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

/** The bit widths of the comparison table (bits per weight, overheads included). */
export const TABLE_TARGETS = [4, 3, 2.3, 2];

export const VARIANTS = [
  "rtn",
  "gptq",
  "cluscomp",
  "cluscomp-act",
  "cluscomp+ft",
  "cluscomp-act+ft",
] as const;
export type Variant = typeof VARIANTS[number];

export interface TableRow {
  name: "quality_table";
  model: string;
  /** The bits the row aims at: ClusComp's budget; RTN and GPTQ take the nearest setting. */
  target: number;
  variant: Variant;
  setting: string;
  /** Bits per weight as stored (codes, codebooks, scales and zeros), the same count for all. */
  bits: number;
  ppl_wiki: number;
  ppl_tinystories: number;
  original_wiki: number;
  original_tinystories: number;
  seqlen: number;
  windows: number;
  seconds: number;
}

export interface TableOptions {
  targets?: number[];
  variants?: Variant[];
  /** Evaluation windows per text (seqlen 128). */
  maxWindows?: number;
  /** Block-finetuning epochs (the compress default is 20). */
  epochs?: number;
  /** Calibration windows and length (default: compress's, 64 x 128 for these small models). */
  calibSamples?: number;
  calibSeqlen?: number;
}

/**
 * RTN / GPTQ's (bits, group) nearest `target` bits per weight over the model's linears (scales
 * and zeros counted), 2 to 8 bits, groups of 32, 64 or 128.
 */
export function nearestRtn(cfg: ModelConfig, target: number): { bits: number; group: number } {
  let best = { bits: 2, group: 128 }, gap = Infinity;
  for (let bits = 2; bits <= 8; bits++) {
    for (const group of [128, 64, 32]) {
      const gp = Math.abs(rtnModelBits(cfg, bits, group) - target);
      if (gp < gap - 1e-12) [best, gap] = [{ bits, group }, gp];
    }
  }
  return best;
}

function rtnModelBits(cfg: ModelConfig, bits: number, group: number): number {
  let sum = 0, weights = 0;
  for (const lin of linearNames(0, cfg)) {
    sum += rtnBits(bits, group, lin.in) * lin.in * lin.out;
    weights += lin.in * lin.out;
  }
  return sum / weights;
}

/**
 * Splits TinyStories text (stories separated by <|endoftext|>) into a calibration half and a
 * held-out half, written under `dir`.
 */
async function splitStories(
  file: string,
  dir: string,
): Promise<{ calib: string; heldOut: string }> {
  const stories = (await Deno.readTextFile(file)).split("<|endoftext|>").filter((t) => t.trim());
  const half = Math.floor(stories.length / 2);
  const calib = join(dir, "calib.txt"), heldOut = join(dir, "heldout.txt");
  await Deno.writeTextFile(calib, stories.slice(0, half).join("<|endoftext|>"));
  await Deno.writeTextFile(heldOut, stories.slice(half).join("<|endoftext|>"));
  return { calib, heldOut };
}

/**
 * The comparison table for one model: one row per (target, variant), each compressed folder
 * evaluated on WikiText-2 (`wiki`) and on the second half of `stories` (TinyStories; the first
 * half is every method's calibration text). Same seed (0) everywhere. GPTQ rows need the gptq
 * method (skipped when it is not registered).
 */
export async function qualityTable(
  model: string,
  wiki: string,
  stories: string,
  opts: TableOptions = {},
  onRow?: (r: TableRow) => void,
): Promise<TableRow[]> {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-quality-table-" });
  const quiet = new Progress(true);
  const cfg = await loadConfig(model);
  const seqlen = 128, maxWindows = opts.maxWindows ?? 64;
  const samples = opts.calibSamples ?? 64, calibSeqlen = opts.calibSeqlen ?? 128;
  const variants = (opts.variants ?? [...VARIANTS]).filter((v) =>
    v !== "gptq" || (methods as Record<string, unknown>).gptq !== undefined
  );
  const rows: TableRow[] = [];
  try {
    const { calib, heldOut } = await splitStories(stories, dir);
    const ppl = async (folder: string, text: string) =>
      (await evaluatePerplexity({ model: folder, text, seqlen, maxWindows, gpuBudget: 2 ** 31 }))
        .ppl;
    const originalWiki = await ppl(model, wiki);
    const originalStories = await ppl(model, heldOut);
    for (const target of opts.targets ?? TABLE_TARGETS) {
      const rtn = nearestRtn(cfg, target);
      for (const variant of variants) {
        const out = join(dir, `${target}-${variant}`);
        const s = tableSettings(model, out, variant, target, rtn, {
          calib,
          samples,
          seqlen: calibSeqlen,
          epochs: opts.epochs ?? 20,
        });
        const t0 = performance.now();
        const r = await compress(s, quiet);
        const row: TableRow = {
          name: "quality_table",
          model: model.split("/").pop()!,
          target,
          variant,
          setting: variant === "rtn" || variant === "gptq"
            ? `${rtn.bits} bits, group ${rtn.group}`
            : planText(r.plan ?? []),
          bits: r.stored_bits_per_weight,
          ppl_wiki: await ppl(out, wiki),
          ppl_tinystories: await ppl(out, heldOut),
          original_wiki: originalWiki,
          original_tinystories: originalStories,
          seqlen,
          windows: maxWindows,
          seconds: (performance.now() - t0) / 1000,
        };
        rows.push(row);
        onRow?.(row);
        await Deno.remove(out, { recursive: true });
        await Deno.remove(`${out}.work`, { recursive: true });
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  return rows;
}

function planText(plan: { kind: LinearKind; d: number; n: number }[]): string {
  return plan.map((p) => `${p.kind}:${p.d}/${p.n}`).join(" ");
}

function tableSettings(
  model: string,
  out: string,
  variant: Variant,
  target: number,
  rtn: { bits: number; group: number },
  c: { calib: string; samples: number; seqlen: number; epochs: number },
): CompressSettings {
  const cluscomp = variant.startsWith("cluscomp");
  const finetune = variant.endsWith("+ft");
  return {
    model,
    out,
    work: `${out}.work`,
    method: cluscomp ? "cluscomp" : variant === "gptq" ? "gptq" : "rtn",
    cluster: {
      bits: target,
      overrides: {},
      splits: 1,
      codebookDtype: "f16",
      iters: 20,
      seed: 0,
      init: "random",
      restarts: 1,
      ...(variant.startsWith("cluscomp-act") ? { weighting: "activations" as const } : {}),
    },
    rtn,
    ...(variant === "gptq" ? { gptq: { ...rtn, actOrder: false, damp: 0.01 } } : {}),
    calib: { file: c.calib, samples: c.samples, seqlen: c.seqlen, holdout: 0.1, seed: 0 },
    ...(finetune
      ? {
        finetune: {
          calib: c.calib,
          samples: c.samples,
          seqlen: c.seqlen,
          holdout: 0.1,
          train: {
            epochs: c.epochs,
            lr: defaultLr(c.samples, c.seqlen),
            weightDecay: 0.1,
            patience: 2,
            extraTerm: false,
            seed: 0,
          },
        },
      }
      : {}),
    gpuBudget: 2 ** 31,
  };
}
