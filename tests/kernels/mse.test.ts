import { getGpu } from "../../src/gpu/device.ts";
import { Tensor } from "../../src/gpu/tensor.ts";
import { mseGrad } from "../../src/kernels/mse.ts";
import { mseGradRef } from "../reference/mse.ts";
import { assertClose, randomF32 } from "../util.ts";

for (const [H, T] of [[1, 1], [37, 65], [300, 129]]) {
  Deno.test(`mse gradient and per-token sums match reference (H=${H}, T=${T})`, async () => {
    const gpu = await getGpu();
    const y = randomF32(H * T, 1), t = randomF32(H * T, 2);
    const scale = 2 / (H * T);
    const ty = await Tensor.from(gpu, y, [H, T], "y"), tt = await Tensor.from(gpu, t, [H, T], "t");
    const dy = Tensor.empty(gpu, [H, T], "dy"), sq = Tensor.empty(gpu, [T], "sq");
    mseGrad(gpu, ty.all, tt.all, dy.all, sq.all, H, T, scale);
    const ref = mseGradRef(y, t, H, T, scale);
    assertClose(await dy.toF32(), ref.dy, 1e-9, 1e-6, "dy");
    assertClose(await sq.toF32(), ref.sq, 1e-6, 1e-5, "sq");
    // accumulate adds a second gradient on top
    mseGrad(gpu, ty.all, tt.all, dy.all, sq.all, H, T, scale, true);
    assertClose(await dy.toF32(), ref.dy.map((v) => 2 * v), 1e-9, 1e-6, "dy accumulated");
    for (const x of [ty, tt, dy, sq]) x.release();
  });
}

Deno.test("mse loop reaches the last of 60,000 features", async () => {
  const gpu = await getGpu();
  const H = 60_000, T = 3;
  const y = new Float32Array(H * T), t = new Float32Array(H * T);
  y[(H - 1) * T + 2] = 3; // planted at the far end of the loop
  const ty = await Tensor.from(gpu, y, [H, T], "y"), tt = await Tensor.from(gpu, t, [H, T], "t");
  const dy = Tensor.empty(gpu, [H, T], "dy"), sq = Tensor.empty(gpu, [T], "sq");
  mseGrad(gpu, ty.all, tt.all, dy.all, sq.all, H, T, 1);
  assertClose(await sq.toF32(), [0, 0, 9], 0, 0, "sq");
  for (const x of [ty, tt, dy, sq]) x.release();
});
