// Round-to-nearest baseline: per-group asymmetric quantization of every linear (src/cluster/rtn.ts),
// stored as qweight, scales and zeros; nothing to finetune.
import { rtnBits } from "../cluster/rtn.ts";
import { rtnBlock } from "../cluster/stage.ts";
import type { QuantizationConfig } from "../format/compressed.ts";
import { linearNames } from "../io/config.ts";
import type { Method } from "./method.ts";

export const rtn: Method = {
  name: "rtn",
  stage: "rtn",
  finetunable: false,
  plan(cfg, src, s) {
    const { bits: b, group } = s.rtn;
    let sum = 0, weights = 0;
    for (const lin of linearNames(0, cfg)) {
      sum += rtnBits(b, group, lin.in) * lin.in * lin.out;
      weights += lin.in * lin.out;
    }
    const bits = { total: sum / weights, stored: sum / weights };
    return Promise.resolve({
      bits,
      settings: s.rtn,
      note: `RTN ${b} bits, group ${group}: ${bits.total.toFixed(4)} bits per weight`,
      quantizeBlock: (_gpu, layer) => rtnBlock(cfg, src, layer, b, group),
      // Units hold the stored tensors already.
      blockTensors: (tensors) => tensors,
      quantConfig: () => {
        const modules: QuantizationConfig["modules"] = {};
        for (let l = 0; l < cfg.layers; l++) {
          for (const lin of linearNames(l, cfg)) {
            modules[lin.name.replace(/\.weight$/, "")] = { bits: b, group };
          }
        }
        return {
          quant_method: "rtn",
          bits_per_weight: bits.total,
          stored_bits_per_weight: bits.stored,
          modules,
        };
      },
    });
  },
};
