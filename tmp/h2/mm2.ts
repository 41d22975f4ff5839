import { getGpu } from "../../src/gpu/device.ts";
import { Tensor } from "../../src/gpu/tensor.ts";
import { matmul, type MatmulArgs } from "../../src/kernels/matmul.ts";
const gpu = await getGpu();
const big = (n: number) => Tensor.empty(gpu, [n], "t");
const A = big(1 << 22), Bt = big(1 << 22), C = big(1 << 22);
const mk = (args: Omit<MatmulArgs, "a" | "b" | "c">) => ({ ...args, a: A.buffer, b: Bt.buffer, c: C.buffer } as MatmulArgs);
const shapes = (T: number, i: number, o: number) => ({
  fwd: mk({ M: o, N: T, K: i, lda: o, ldb: T, ldc: T }),
  back: mk({ M: i, N: T, K: o, lda: i, ldb: T, ldc: T }),
  grad: mk({ M: i, N: o, K: T, lda: i, ldb: o, ldc: o }),
});
for (const [i, o] of [[256, 256], [256, 768], [768, 256]]) {
  for (const kind of ["fwd", "back", "grad"] as const) {
    const res: Record<number, number> = {};
    for (let round = 0; round < 6; round++) {
      for (const T of [128, 512, 1024]) {
        const a = shapes(T, i, o)[kind];
        const reps = 1024 / T;
        matmul(gpu, a); await gpu.sync();
        const t0 = performance.now();
        for (let j = 0; j < reps; j++) matmul(gpu, a);
        await gpu.sync();
        const ms = performance.now() - t0;
        res[T] = Math.min(res[T] ?? 1e9, ms);
      }
    }
    console.log(`${kind} in${i} out${o}: ms per 1024 tokens`, Object.entries(res).map(([T, v]) => `T${T}=${v.toFixed(1)}`).join(" "));
  }
}
