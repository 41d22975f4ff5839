import { getGpu } from "../../src/gpu/device.ts";
import { Tensor } from "../../src/gpu/tensor.ts";
import { matmul, planMatmul, type MatmulArgs } from "../../src/kernels/matmul.ts";
const gpu = await getGpu();
const big = (n: number) => Tensor.empty(gpu, [n], "t");
const A = big(1 << 22), Bt = big(1 << 22), C = big(1 << 22);
async function time(label: string, args: Omit<MatmulArgs, "a" | "b" | "c">) {
  const full = { ...args, a: A.buffer, b: Bt.buffer, c: C.buffer } as MatmulArgs;
  matmul(gpu, full); await gpu.sync();
  const ts: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    for (let j = 0; j < 5; j++) matmul(gpu, full);
    await gpu.sync();
    ts.push((performance.now() - t0) / 5);
  }
  ts.sort((a, b) => a - b);
  const fl = 2 * args.M * args.N * args.K * (args.batch ?? 1);
  const p = planMatmul(gpu, full);
  console.log(label.padEnd(36), ts[0].toFixed(2), "ms", (fl / ts[0] / 1e6).toFixed(1), "GFLOP/s", `ln=${p.ln} vec=${+p.vecA}${+p.vecB}${+p.vecC} d=${p.dispatches}`);
}
for (const T of [128, 512, 1024]) {
  for (const [i, o] of [[256, 256], [256, 768], [768, 256]]) {
    await time(`fwd in${i} out${o} T${T}`, { M: o, N: T, K: i, lda: o, ldb: T, ldc: T });
    await time(`back in${i} out${o} T${T}`, { M: i, N: T, K: o, lda: i, ldb: T, ldc: T });
    await time(`grad in${i} out${o} T${T}`, { M: i, N: o, K: T, lda: i, ldb: o, ldc: o });
  }
}
