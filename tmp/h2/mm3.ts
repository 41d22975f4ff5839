import { getGpu } from "../../src/gpu/device.ts";
import { Tensor } from "../../src/gpu/tensor.ts";
import { matmul, type MatmulArgs } from "../../src/kernels/matmul.ts";
const gpu = await getGpu();
const big = (n: number) => Tensor.empty(gpu, [n], "t");
const A = big(1 << 22), Bt = big(1 << 22), C = big(1 << 22);
const mk = (args: Omit<MatmulArgs, "a" | "b" | "c">) => ({ ...args, a: A.buffer, b: Bt.buffer, c: C.buffer } as MatmulArgs);
const pad = Number(Deno.args[0] ?? 16);
const shapes = (T: number, i: number, o: number, p: number) => ({
  fwd: mk({ M: o, N: T, K: i, lda: o, ldb: T + p, ldc: T + p }),
  back: mk({ M: i, N: T, K: o, lda: i, ldb: T + p, ldc: T + p }),
  grad: mk({ M: i, N: o, K: T, lda: i + p, ldb: o + p, ldc: o }),
});
for (const [i, o] of [[256, 256], [256, 768], [768, 256]]) {
  for (const kind of ["fwd", "back", "grad"] as const) {
    const res: Record<string, number> = {};
    for (let round = 0; round < 5; round++) {
      for (const T of [128, 1024]) for (const p of [0, pad]) {
        const a = shapes(T, i, o, p)[kind];
        const reps = 1024 / T;
        matmul(gpu, a); await gpu.sync();
        const t0 = performance.now();
        for (let j = 0; j < reps; j++) matmul(gpu, a);
        await gpu.sync();
        const ms = performance.now() - t0;
        const key = `T${T}p${p}`;
        res[key] = Math.min(res[key] ?? 1e9, ms);
      }
    }
    console.log(`${kind} in${i} out${o}: ms/1024 tok`, Object.entries(res).map(([k, v]) => `${k}=${v.toFixed(1)}`).join(" "));
  }
}
