// Round-to-nearest baseline: per-group asymmetric quantization along the input dimension
// (groups of G consecutive input channels of one output row), fp16 scale and b-bit zero point.
// It is O(weights), the cost of reading them, so it runs on the host.
import { UserError } from "../errors.ts";
import { f32ToF16Bytes } from "../io/safetensors.ts";

export interface RtnResult {
  /** [out, in] quantized values in [0, 2^bits). */
  q: Uint8Array;
  /** [out, groups] fp16-rounded scales. */
  scales: Float32Array;
  /** [out, groups] zero points in [0, 2^bits). */
  zeros: Uint8Array;
}

/** Bits per weight of one [out, in] matrix: codes plus an fp16 scale and a b-bit zero per group. */
export function rtnBits(bits: number, group: number, inDim: number): number {
  return bits + ((16 + bits) * Math.ceil(inDim / group)) / inDim;
}

export function rtnQuantize(
  w: Float32Array,
  out: number,
  inDim: number,
  bits: number,
  group: number,
): RtnResult {
  if (!Number.isInteger(bits) || bits < 1 || bits > 8) {
    throw new UserError(`rtn: --bits must be an integer from 1 to 8 (got ${bits})`);
  }
  if (!Number.isInteger(group) || group < 1) {
    throw new UserError(`rtn: --group must be >= 1 (got ${group})`);
  }
  const groups = Math.ceil(inDim / group);
  const qmax = 2 ** bits - 1;
  const q = new Uint8Array(out * inDim);
  const scales = new Float32Array(out * groups);
  const zeros = new Uint8Array(out * groups);
  for (let r = 0; r < out; r++) {
    for (let g = 0; g < groups; g++) {
      const c0 = g * group, c1 = Math.min(inDim, c0 + group);
      let lo = 0, hi = 0; // the range always includes 0, as in GPTQ's quantizer
      for (let c = c0; c < c1; c++) {
        const v = w[r * inDim + c];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      let scale = Math.f16round((hi - lo) / qmax);
      if (!(scale > 0)) scale = Math.f16round(1e-8) || 6e-8;
      const zero = Math.min(qmax, Math.max(0, Math.round(-lo / scale)));
      scales[r * groups + g] = scale;
      zeros[r * groups + g] = zero;
      for (let c = c0; c < c1; c++) {
        const v = Math.round(w[r * inDim + c] / scale) + zero;
        q[r * inDim + c] = Math.min(qmax, Math.max(0, v));
      }
    }
  }
  return { q, scales, zeros };
}

/** W [out, in] from RTN parts. */
export function rtnDequantize(
  r: RtnResult,
  out: number,
  inDim: number,
  group: number,
): Float32Array {
  const groups = Math.ceil(inDim / group);
  const w = new Float32Array(out * inDim);
  for (let row = 0; row < out; row++) {
    for (let c = 0; c < inDim; c++) {
      const g = row * groups + Math.floor(c / group);
      w[row * inDim + c] = (r.q[row * inDim + c] - r.zeros[g]) * r.scales[g];
    }
  }
  return w;
}

/** The stored tensors of one quantized [out, in] linear (RTN's format, which GPTQ shares). */
export function rtnTensors(
  name: string,
  r: RtnResult,
  out: number,
  inDim: number,
  group: number,
): { name: string; dtype: "U8" | "F16"; shape: number[]; data: Uint8Array }[] {
  const groups = Math.ceil(inDim / group);
  return [
    { name: `${name}.qweight`, dtype: "U8", shape: [out, inDim], data: r.q },
    { name: `${name}.scales`, dtype: "F16", shape: [out, groups], data: f32ToF16Bytes(r.scales) },
    { name: `${name}.zeros`, dtype: "U8", shape: [out, groups], data: r.zeros },
  ];
}
