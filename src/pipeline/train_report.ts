// train_report.json, train_report.md and train_loss.svg for a finetuned compressed folder.
import type { FinetuneModelResult } from "./result.ts";

/** The report files to add to the output folder (name -> content). */
export function trainReportFiles(r: FinetuneModelResult): Record<string, string> {
  return {
    "train_report.json": JSON.stringify(r, null, 2) + "\n",
    "train_report.md": trainMarkdown(r),
    "train_loss.svg": trainSvg(r),
  };
}

export function trainMarkdown(r: FinetuneModelResult): string {
  const s = r.settings, rep = r.report;
  const trained = [
    "codebooks",
    ...(s.trainNorms ? ["norms"] : []),
    ...(s.trainHead ? ["head"] : []),
  ];
  return [
    `# Finetuned ${r.model}`,
    "",
    `- data: ${r.data.source} (${r.data.format}), ${r.data.windows} training windows, ` +
    `${r.data.evalWindows} held out, seqlen ${s.seqlen}`,
    `- loss: ${
      r.teacher ? `distillation from ${r.teacher} (weight ${s.kdWeight})` : "cross-entropy"
    }`,
    `- trained: ${trained.join(", ")} (codes fixed)`,
    `- ${rep.steps} steps of ${s.batch} windows, lr ${s.lr} (${s.schedule}, warmup ${s.warmup})`,
    `- held-out perplexity: ${r.ppl_before.toFixed(3)} before, ${r.ppl_after.toFixed(3)} after ` +
    `(step ${rep.bestStep}${rep.bestStep === 0 ? ": no evaluation improved, input kept" : ""})`,
    `- ${rep.tokens} tokens trained on in ${rep.seconds.toFixed(1)} s`,
    "",
    "![training loss and held-out NLL](train_loss.svg)",
    "",
  ].join("\n");
}

/** Training loss per step and held-out NLL at each evaluation, one chart. */
export function trainSvg(r: FinetuneModelResult): string {
  const W = 640, H = 360, L = 70, R = 20, T = 30, B = 50;
  const rep = r.report;
  const pts = [
    ...rep.losses.map((l) => l.loss),
    ...rep.evals.map((e) => e.nll),
    rep.initialNll,
  ].filter(Number.isFinite);
  const lo = Math.min(...pts), hi = Math.max(...pts), span = hi - lo || 1;
  const steps = Math.max(1, rep.steps);
  const x = (step: number) => L + (step / steps) * (W - L - R);
  const y = (v: number) => T + (1 - (v - lo) / span) * (H - T - B);
  const poly = (xy: [number, number][], color: string) =>
    `<polyline fill="none" stroke="${color}" stroke-width="2" points="${
      xy.map(([a, b]) => `${x(a).toFixed(1)},${y(b).toFixed(1)}`).join(" ")
    }"/>`;
  const ticks: string[] = [];
  for (let i = 0; i <= 4; i++) {
    const v = lo + (span * i) / 4;
    ticks.push(
      `<line x1="${L}" x2="${W - R}" y1="${y(v).toFixed(1)}" y2="${
        y(v).toFixed(1)
      }" stroke="#ddd"/>`,
      `<text x="${L - 8}" y="${(y(v) + 4).toFixed(1)}" text-anchor="end" font-size="12">${
        v.toFixed(3)
      }</text>`,
    );
  }
  const evals: [number, number][] = [
    [0, rep.initialNll],
    ...rep.evals.map((e) => [e.step, e.nll] as [number, number]),
  ];
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    ...ticks,
    `<text x="${(L + W - R) / 2}" y="${H - 10}" text-anchor="middle" font-size="13">step</text>`,
    `<text x="${L}" y="${H - B + 18}" font-size="12">0</text>`,
    `<text x="${W - R}" y="${H - B + 18}" text-anchor="end" font-size="12">${rep.steps}</text>`,
    poly(rep.losses.map((l) => [l.step, l.loss]), "#d62728"),
    poly(evals, "#1f77b4"),
    ...evals.map(([a, b]) =>
      `<circle cx="${x(a).toFixed(1)}" cy="${y(b).toFixed(1)}" r="3" fill="#1f77b4"/>`
    ),
    `<text x="${L + 10}" y="${T - 10}" font-size="13" fill="#d62728">training loss</text>`,
    `<text x="${L + 130}" y="${T - 10}" font-size="13" fill="#1f77b4">held-out NLL</text>`,
    `</svg>`,
    "",
  ].join("\n");
}
