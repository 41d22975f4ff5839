import { getGpu } from "../../src/gpu/device.ts";
import { Tensor } from "../../src/gpu/tensor.ts";
import { rmsnorm, RMSNORM_MAX_H } from "../../src/kernels/norm.ts";
import { rmsnormRef } from "../reference/norm.ts";
import { assertClose, randomF32 } from "../util.ts";

async function check(
  x: Float32Array,
  w: Float32Array,
  H: number,
  T: number,
  eps: number,
  rtol = 2e-6,
) {
  const gpu = await getGpu();
  const tx = await Tensor.from(gpu, x, [H, T], "x");
  const tw = await Tensor.from(gpu, w, [H], "w");
  const to = Tensor.empty(gpu, [H, T], "out");
  rmsnorm(gpu, tx.all, tw.all, to.all, H, T, eps);
  const got = await to.toF32();
  for (const t of [tx, tw, to]) t.release();
  assertClose(got, rmsnormRef(x, w, H, T, eps), 1e-6, rtol, `rmsnorm H=${H} T=${T}`);
  return got;
}

for (const [H, T] of [[1, 1], [7, 1], [64, 259], [301, 67], [4099, 131]]) {
  Deno.test(`rmsnorm matches reference (H=${H}, T=${T})`, async () => {
    await check(randomF32(H * T, H + T, -3, 3), randomF32(H, 7, 0.5, 1.5), H, T, 1e-5);
  });
}

Deno.test("rmsnorm with a large eps and constant columns", async () => {
  const H = 33, T = 5;
  const x = new Float32Array(H * T).fill(0.01);
  await check(x, randomF32(H, 8), H, T, 0.5);
});

Deno.test("rmsnorm reaches feature H-1 when H is near the loop limit", async () => {
  const H = 32_000, T = 3;
  const x = randomF32(H * T, 9, -0.01, 0.01);
  // A planted large value in the last feature of the last token dominates its mean square.
  x[(H - 1) * T + T - 1] = 1000;
  const w = randomF32(H, 10, 0.5, 1.5);
  // A sequential f32 sum of 32,000 squares is good to about sqrt(H) * 2^-24 ~ 1e-5 relative.
  const got = await check(x, w, H, T, 1e-6, 1e-5);
  const want = 1000 / Math.sqrt(1000 ** 2 / H) * w[H - 1];
  assertClose([got[(H - 1) * T + T - 1]], [want], 0, 1e-4, "planted value");
});

Deno.test("rmsnorm rejects H past the loop limit", async () => {
  const gpu = await getGpu();
  const b = { buffer: gpu.createBuffer(16, "tiny") };
  let msg = "";
  try {
    rmsnorm(gpu, b, b, b, RMSNORM_MAX_H + 1, 1, 1e-5);
  } catch (e) {
    msg = (e as Error).message;
  }
  gpu.releaseBuffer(b.buffer);
  if (!msg.includes("outside")) throw new Error(`expected a range error, got "${msg}"`);
});
