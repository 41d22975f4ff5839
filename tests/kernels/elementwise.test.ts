import { getGpu } from "../../src/gpu/device.ts";
import { Tensor } from "../../src/gpu/tensor.ts";
import { add, siluMul } from "../../src/kernels/elementwise.ts";
import { addRef, siluMulRef } from "../reference/elementwise.ts";
import { assertClose, randomF32 } from "../util.ts";

for (const n of [1, 257, 100_003]) {
  Deno.test(`residual add matches reference (n=${n})`, async () => {
    const gpu = await getGpu();
    const x = randomF32(n, 1), y = randomF32(n, 2);
    const tx = await Tensor.from(gpu, x, [n], "x"), ty = await Tensor.from(gpu, y, [n], "y");
    add(gpu, tx.all, ty.all, n);
    assertClose(await tx.toF32(), addRef(x, y), 0, 0, "add");
    tx.release();
    ty.release();
  });

  Deno.test(`silu gate product matches reference (n=${n})`, async () => {
    const gpu = await getGpu();
    const x = randomF32(n, 3, -8, 8), y = randomF32(n, 4);
    const tx = await Tensor.from(gpu, x, [n], "x"), ty = await Tensor.from(gpu, y, [n], "y");
    siluMul(gpu, tx.all, ty.all, n);
    assertClose(await tx.toF32(), siluMulRef(x, y), 1e-6, 1e-5, "silu_mul");
    tx.release();
    ty.release();
  });
}

Deno.test("add covers more than 65,535 workgroups (2-D grid)", async () => {
  const gpu = await getGpu();
  const n = 65536 * 256 + 77;
  const x = randomF32(n, 5), y = randomF32(n, 6);
  const tx = await Tensor.from(gpu, x, [n], "x"), ty = await Tensor.from(gpu, y, [n], "y");
  add(gpu, tx.all, ty.all, n);
  const got = await tx.toF32();
  assertClose(got.subarray(n - 1000), addRef(x.subarray(n - 1000), y.subarray(n - 1000)), 0, 0);
  assertClose(got.subarray(0, 1000), addRef(x.subarray(0, 1000), y.subarray(0, 1000)), 0, 0);
  tx.release();
  ty.release();
});
