// report.json, report.md and loss.svg for a compressed folder.
import { join } from "node:path";
import type { BlockReport } from "../finetune/stage.ts";
import { linearNames, type ModelConfig } from "../io/config.ts";
import { DTYPE_SIZE, SafetensorsIndex } from "../io/safetensors.ts";
import type { CompressResult } from "./result.ts";

/**
 * Bits per weight of the original model's linears as stored (F32 32, F16 and BF16 16), weighted
 * by size: what the compressed linears are compared with.
 */
export function originalBitsPerWeight(cfg: ModelConfig, idx: SafetensorsIndex): number {
  let bits = 0, weights = 0;
  for (let l = 0; l < cfg.layers; l++) {
    for (const lin of linearNames(l, cfg)) {
      const t = idx.info(lin.name);
      const n = t.shape.reduce((a, b) => a * b, 1);
      bits += 8 * DTYPE_SIZE[t.dtype] * n;
      weights += n;
    }
  }
  return bits / weights;
}

export async function writeReport(dir: string, r: CompressResult): Promise<void> {
  await Deno.writeTextFile(join(dir, "report.json"), JSON.stringify(r, null, 2) + "\n");
  const originalBits = r.eval ? r.original_bits_per_weight : undefined;
  await Deno.writeTextFile(join(dir, "report.md"), reportMarkdown(r, originalBits));
  const svg = lossSvg(r);
  if (svg) await Deno.writeTextFile(join(dir, "loss.svg"), svg);
}

const fmt = (x: number | undefined, digits = 4) => x === undefined ? "-" : x.toFixed(digits);
/** 32 or 16 as an integer, a mixed model's weighted width with 3 digits. */
export const bitsText = (b: number | undefined) =>
  b === undefined ? "-" : Number.isInteger(b) ? String(b) : b.toFixed(3);
const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;

/** `originalBits`: the original's bits per weight (originalBitsPerWeight); "-" when not given. */
export function reportMarkdown(r: CompressResult, originalBits?: number): string {
  const out: string[] = [];
  out.push(`# cluscomp report`, "");
  out.push(`- model: \`${r.model}\``);
  out.push(`- method: ${r.method}${r.finetune ? " + block-wise finetuning" : ""}`);
  out.push(
    r.method === "cluscomp"
      ? `- bits per weight (compressed linears, codebooks included): ${
        fmt(r.bits_per_weight)
      }; as stored (codes packed at ceil(log2 n) bits, 16-bit codebooks): ${
        fmt(r.stored_bits_per_weight)
      }`
      : `- bits per weight (compressed linears, scales and zeros included): ${
        fmt(r.bits_per_weight)
      }`,
  );
  out.push(`- peak GPU memory held by cluscomp: ${mib(r.gpu_peak_bytes)}`);
  out.push("");
  if (r.plan) {
    out.push("## Plan", "", "| matrix | shape | d | n | code bits | codebook bits | total |");
    out.push("| --- | --- | --- | --- | --- | --- | --- |");
    for (const p of r.plan) {
      out.push(
        `| ${p.kind} | ${p.out}x${p.in} | ${p.d} | ${p.n} | ${fmt(p.codeBits, 3)} | ` +
          `${fmt(p.codebookBits, 3)} | ${fmt(p.totalBits, 3)} |`,
      );
    }
    out.push("");
  }
  if (r.eval) {
    const e = r.eval;
    out.push(
      `## Perplexity`,
      "",
      `\`${e.original.text}\`, seqlen ${e.original.seqlen}, ${e.original.windows} windows`,
      "",
    );
    out.push("| model | bits per weight | ppl |", "| --- | --- | --- |");
    out.push(`| original | ${bitsText(originalBits)} | ${fmt(e.original.ppl)} |`);
    const label = r.finetune ? `${r.method} + finetune` : r.method;
    out.push(`| ${label} | ${fmt(r.bits_per_weight, 3)} | ${fmt(e.compressed.ppl)} |`, "");
  }
  out.push("## Per block", "");
  if (r.finetune) {
    out.push("| block | k-means mse | held-out mse before | after | best epoch | seconds |");
    out.push("| --- | --- | --- | --- | --- | --- |");
    for (const b of r.finetune.blocks) {
      const km = r.blocks[b.layer]?.facts;
      const mse = km ? km.reduce((a, f) => a + f.mse, 0) / km.length : undefined;
      out.push(
        `| ${b.layer} | ${mse?.toExponential(3) ?? "-"} | ${b.initialMse.toExponential(4)} | ` +
          `${b.bestMse.toExponential(4)} | ${b.bestEpoch} | ${b.seconds.toFixed(1)} |`,
      );
    }
    out.push("", "![per-block loss](loss.svg)");
  } else {
    out.push("| block | mean weight mse | seconds |", "| --- | --- | --- |");
    for (const b of r.blocks) {
      const mse = b.facts.reduce((a, f) => a + f.mse, 0) / b.facts.length;
      const sec = b.facts.reduce((a, f) => a + f.seconds, 0);
      out.push(`| ${b.layer} | ${mse.toExponential(3)} | ${sec.toFixed(1)} |`);
    }
  }
  out.push("", "## Time (seconds)", "", "| stage | seconds |", "| --- | --- |");
  for (const [k, v] of Object.entries(r.seconds)) out.push(`| ${k} | ${v.toFixed(1)} |`);
  out.push("");
  return out.join("\n");
}

/** Per-block held-out MSE before and after finetuning, log scale. */
export function lossSvg(r: CompressResult): string | null {
  const blocks = r.finetune?.blocks;
  if (!blocks || blocks.length === 0) return null;
  const W = 640, H = 360, L = 70, R = 20, T = 30, B = 50;
  const all = blocks.flatMap((b) => [b.initialMse, b.bestMse]).filter((v) => v > 0);
  const lo = Math.floor(Math.log10(Math.min(...all))), hi = Math.ceil(Math.log10(Math.max(...all)));
  const span = Math.max(1, hi - lo);
  const x = (i: number) => L + (blocks.length === 1 ? 0.5 : i / (blocks.length - 1)) * (W - L - R);
  const y = (v: number) => T + (1 - (Math.log10(v) - lo) / span) * (H - T - B);
  const line = (pick: (b: BlockReport) => number, color: string) =>
    `<polyline fill="none" stroke="${color}" stroke-width="2" points="${
      blocks.map((b, i) => `${x(i).toFixed(1)},${y(pick(b)).toFixed(1)}`).join(" ")
    }"/>` +
    blocks.map((b, i) =>
      `<circle cx="${x(i).toFixed(1)}" cy="${y(pick(b)).toFixed(1)}" r="3" fill="${color}"/>`
    ).join("");
  const parts: string[] = [];
  for (let e = lo; e <= hi; e++) {
    parts.push(
      `<line x1="${L}" x2="${W - R}" y1="${y(10 ** e)}" y2="${y(10 ** e)}" stroke="#ddd"/>`,
      `<text x="${L - 8}" y="${y(10 ** e) + 4}" text-anchor="end" font-size="12">1e${e}</text>`,
    );
  }
  blocks.forEach((b, i) =>
    parts.push(
      `<text x="${x(i)}" y="${H - B + 18}" text-anchor="middle" font-size="12">${b.layer}</text>`,
    )
  );
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    ...parts,
    `<text x="${(L + W - R) / 2}" y="${H - 10}" text-anchor="middle" font-size="13">block</text>`,
    `<text x="16" y="${H / 2}" transform="rotate(-90 16 ${H / 2})" text-anchor="middle" ` +
    `font-size="13">held-out block MSE</text>`,
    line((b) => b.initialMse, "#d62728"),
    line((b) => b.bestMse, "#1f77b4"),
    `<text x="${L + 10}" y="${T - 10}" font-size="13" fill="#d62728">before finetuning</text>`,
    `<text x="${L + 160}" y="${T - 10}" font-size="13" fill="#1f77b4">after finetuning</text>`,
    `</svg>`,
    "",
  ].join("\n");
}
