// GPTQ: per-group asymmetric quantization with error compensation through the inverse Hessian of
// each linear's calibration inputs (src/cluster/gptq.ts). The Hessians are the stats stage's Gram
// matrices (src/cluster/stats.ts), factored once per block input (q, k, v share one, gate and up
// another). Stored as RTN's qweight, scales and zeros; nothing to finetune.
import {
  checkGptqOptions,
  gptqQuantize,
  type HessianFactor,
  hessianFactor,
} from "../cluster/gptq.ts";
import { rtnBits, rtnDequantize, rtnTensors } from "../cluster/rtn.ts";
import type { MatrixFacts } from "../cluster/stage.ts";
import { type InputName, inputOf } from "../cluster/stats.ts";
import { UserError } from "../errors.ts";
import type { QuantizationConfig, TensorBytes } from "../format/compressed.ts";
import type { Gpu } from "../gpu/device.ts";
import { type LinearKind, linearNames, type ModelConfig } from "../io/config.ts";
import type { WeightSource } from "../model/weights.ts";
import type { Method, MethodPlan, MethodSettings } from "./method.ts";

type GptqSettings = NonNullable<MethodSettings["gptq"]>;

/** One block's tensors (qweight, scales, zeros per linear) and per-matrix facts. */
export async function gptqBlock(
  gpu: Gpu,
  cfg: ModelConfig,
  src: WeightSource,
  layer: number,
  g: GptqSettings,
  stats: NonNullable<MethodSettings["stats"]>,
  onMatrix?: (kind: LinearKind, iter: number, objective: number) => void,
): Promise<{ tensors: TensorBytes[]; facts: MatrixFacts[] }> {
  const s = await stats(layer);
  if (!s.gram) {
    throw new Error(`gptq: block ${layer}'s statistics hold no Gram matrices (full statistics)`);
  }
  const factors = new Map<InputName, HessianFactor>();
  const tensors: TensorBytes[] = [];
  const facts: MatrixFacts[] = [];
  for (const lin of linearNames(layer, cfg)) {
    const start = performance.now();
    const input = inputOf(lin.kind);
    let f = factors.get(input);
    if (!f) {
      f = hessianFactor(s.gram[input], lin.in, s.tokens, g, `block ${layer} input "${input}"`);
      factors.set(input, f);
    }
    const wT = await src.linearT(layer, lin.kind);
    const r = await gptqQuantize(gpu, wT, lin.in, lin.out, f, g);
    const back = rtnDequantize(r, lin.out, lin.in, g.group);
    let objective = 0;
    for (let o = 0; o < lin.out; o++) {
      for (let i = 0; i < lin.in; i++) {
        objective += (back[o * lin.in + i] - wT[i * lin.out + o]) ** 2;
      }
    }
    const name = lin.name.replace(/\.weight$/, "");
    tensors.push(...rtnTensors(name, r, lin.out, lin.in, g.group));
    facts.push({
      kind: lin.kind,
      objective,
      mse: objective / (lin.in * lin.out),
      distanceEvals: 0,
      bruteForceEvals: 0,
      seconds: (performance.now() - start) / 1000,
    });
    onMatrix?.(lin.kind, 0, objective);
  }
  return { tensors, facts };
}

export const gptq: Method = {
  name: "gptq",
  needsStats: "full",
  stage: "gptq",
  finetunable: false,
  // Settings are checked inside the promise: a refusal is a rejection, as for other methods.
  plan: (cfg, src, s) => Promise.resolve().then(() => planGptq(cfg, src, s)),
};

function planGptq(cfg: ModelConfig, src: WeightSource, s: MethodSettings): MethodPlan {
  const g: GptqSettings = s.gptq ?? { ...s.rtn, actOrder: false, damp: 0.01 };
  checkGptqOptions(g);
  const stats = s.stats;
  if (!stats) {
    throw new UserError("gptq: needs calibration statistics; give --calib FILE");
  }
  let sum = 0, weights = 0;
  for (const lin of linearNames(0, cfg)) {
    sum += rtnBits(g.bits, g.group, lin.in) * lin.in * lin.out;
    weights += lin.in * lin.out;
  }
  const bits = { total: sum / weights, stored: sum / weights };
  const order = g.actOrder ? ", act-order" : "";
  return {
    bits,
    // The statistics' key too: other calibration data gives other Hessians.
    settings: { ...g, stats: s.statsKey ?? null },
    note: `GPTQ ${g.bits} bits, group ${g.group}${order}, damp ${g.damp}: ` +
      `${bits.total.toFixed(4)} bits per weight`,
    quantizeBlock: (gpu, layer, onMatrix) => gptqBlock(gpu, cfg, src, layer, g, stats, onMatrix),
    // Units hold the stored tensors already.
    blockTensors: (tensors) => tensors,
    quantConfig: () => {
      const modules: QuantizationConfig["modules"] = {};
      for (let l = 0; l < cfg.layers; l++) {
        for (const lin of linearNames(l, cfg)) {
          modules[lin.name.replace(/\.weight$/, "")] = {
            bits: g.bits,
            group: g.group,
            act_order: g.actOrder,
            damp: g.damp,
          };
        }
      }
      return {
        quant_method: "gptq",
        bits_per_weight: bits.total,
        stored_bits_per_weight: bits.stored,
        modules,
      };
    },
  };
}
