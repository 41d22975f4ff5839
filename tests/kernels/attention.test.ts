import { getGpu } from "../../src/gpu/device.ts";
import { Tensor } from "../../src/gpu/tensor.ts";
import { causalSoftmax, type QueryBlock, SOFTMAX_MAX_T } from "../../src/kernels/attention.ts";
import { attentionRef, causalSoftmaxRef } from "../reference/attention.ts";
import { assertClose, randomF32 } from "../util.ts";

async function softmaxOnGpu(
  s: Float32Array,
  heads: number,
  T: number,
  scale: number,
  window = 0,
  block?: QueryBlock,
): Promise<Float32Array> {
  const gpu = await getGpu();
  const ts = await Tensor.from(gpu, s, [s.length], "scores");
  causalSoftmax(gpu, ts.all, heads, T, scale, window, block);
  const got = await ts.toF32();
  ts.release();
  return got;
}

const cases: [number, number, number, number][] = [
  // heads, T, scale, window
  [3, 1, 0.5, 0],
  [1, 2, 1, 0],
  [2, 130, 0.125, 0],
  [3, 100, 0.3, 17],
  [1, 70, 1, 1],
];
for (const [heads, T, scale, window] of cases) {
  Deno.test(`causalSoftmax matches reference (heads=${heads}, T=${T}, window=${window})`, async () => {
    const s = randomF32(heads * T * T, heads * 100 + T, -8, 8);
    const got = await softmaxOnGpu(s, heads, T, scale, window);
    assertClose(got, causalSoftmaxRef(s, heads, T, scale, window), 1e-7, 1e-5, "softmax");
  });
}

Deno.test("causalSoftmax on a block of query columns (q0 > 0) with and without a window", async () => {
  const heads = 2, T = 150, q0 = 100, nq = 50;
  for (const window of [0, 40]) {
    const s = randomF32(heads * T * nq, 11 + window, -5, 5);
    const got = await softmaxOnGpu(s, heads, T, 0.7, window, { q0, nq });
    assertClose(got, causalSoftmaxRef(s, heads, T, 0.7, window, q0, nq), 1e-7, 1e-5, "block");
  }
});

Deno.test("causalSoftmax sees a planted score at key j = i of the last query (T=1500)", async () => {
  const T = 1500;
  const s = randomF32(T * T, 12);
  s[(T - 1) * T + T - 1] = 40;
  const got = await softmaxOnGpu(s, 1, T, 1);
  assertClose(got, causalSoftmaxRef(s, 1, T, 1), 1e-7, 1e-5, "softmax");
  assertClose([got[(T - 1) * T + T - 1]], [1], 1e-6, 0, "planted");
});

Deno.test("causalSoftmax reaches the last of 86,000 keys (loop limit)", async () => {
  const T = 86_000, nq = 3, q0 = T - nq;
  const s = randomF32(T * nq, 13, -2, 2);
  // The last query sees all keys; a planted score at its own key (the last row) takes ~all mass.
  s[(T - 1) * nq + nq - 1] = 30;
  const got = await softmaxOnGpu(s, 1, T, 1, 0, { q0, nq });
  assertClose(got, causalSoftmaxRef(s, 1, T, 1, 0, q0, nq), 1e-9, 1e-4, "softmax");
  const p = got[(T - 1) * nq + nq - 1];
  if (!(p > 0.9)) throw new Error(`planted key got probability ${p}`);
});

Deno.test("causalSoftmax between host matmuls matches the reference GQA attention", async () => {
  const heads = 4, kvHeads = 2, hd = 8, T = 37, group = heads / kvHeads;
  for (const window of [0, 5]) {
    const qT = randomF32(heads * hd * T, 21), kT = randomF32(kvHeads * hd * T, 22);
    const vT = randomF32(kvHeads * hd * T, 23);
    // S^T[h, j, i] = sum_d K^T[kv(h) d, j] Q^T[h d, i]
    const s = new Float32Array(heads * T * T);
    for (let h = 0; h < heads; h++) {
      const kv = Math.floor(h / group);
      for (let j = 0; j < T; j++) {
        for (let i = 0; i < T; i++) {
          let dot = 0;
          for (let d = 0; d < hd; d++) dot += kT[(kv * hd + d) * T + j] * qT[(h * hd + d) * T + i];
          s[(h * T + j) * T + i] = dot;
        }
      }
    }
    const p = await softmaxOnGpu(s, heads, T, 1 / Math.sqrt(hd), window);
    // O^T[h d, i] = sum_j V^T[kv(h) d, j] P^T[h, j, i]
    const o = new Float32Array(heads * hd * T);
    for (let h = 0; h < heads; h++) {
      const kv = Math.floor(h / group);
      for (let d = 0; d < hd; d++) {
        for (let i = 0; i < T; i++) {
          let acc = 0;
          for (let j = 0; j < T; j++) acc += vT[(kv * hd + d) * T + j] * p[(h * T + j) * T + i];
          o[(h * hd + d) * T + i] = acc;
        }
      }
    }
    const want = attentionRef(qT, kT, vT, heads, kvHeads, hd, T, 1 / Math.sqrt(hd), window);
    assertClose(o, want, 1e-6, 1e-5, `attention window=${window}`);
  }
});

Deno.test("causalSoftmax rejects more keys than the loop limit allows", async () => {
  const gpu = await getGpu();
  const b = { buffer: gpu.createBuffer(16, "tiny") };
  let msg = "";
  try {
    causalSoftmax(gpu, b, 1, SOFTMAX_MAX_T + 1, 1);
  } catch (e) {
    msg = (e as Error).message;
  }
  gpu.releaseBuffer(b.buffer);
  if (!msg.includes("outside")) throw new Error(`expected a range error, got "${msg}"`);
});
