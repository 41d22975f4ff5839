import { getGpu } from "../../src/gpu/device.ts";
import { Tensor } from "../../src/gpu/tensor.ts";
import { rope, ropeTables } from "../../src/kernels/rope.ts";
import { ropeRef } from "../reference/rope.ts";
import { assertClose, randomF32 } from "../util.ts";

function invFreq(headDim: number, theta = 10000): Float64Array {
  const inv = new Float64Array(headDim / 2);
  for (let i = 0; i < inv.length; i++) inv[i] = 1 / theta ** ((2 * i) / headDim);
  return inv;
}

async function check(nHeads: number, headDim: number, T: number, pos0: number) {
  const gpu = await getGpu();
  const x = randomF32(nHeads * headDim * T, nHeads * 1000 + T, -2, 2);
  const { cos, sin } = ropeTables(invFreq(headDim), T, pos0);
  const tx = await Tensor.from(gpu, x, [nHeads * headDim, T], "x");
  const tc = await Tensor.from(gpu, cos, [T, headDim / 2], "cos");
  const ts = await Tensor.from(gpu, sin, [T, headDim / 2], "sin");
  rope(gpu, tx.all, tc.all, ts.all, nHeads, headDim, T);
  const got = await tx.toF32();
  for (const t of [tx, tc, ts]) t.release();
  assertClose(got, ropeRef(x, cos, sin, nHeads, headDim, T), 1e-6, 1e-6, "rope");
}

for (
  const [nHeads, headDim, T, pos0] of [[1, 2, 1, 0], [3, 8, 1, 5], [5, 64, 259, 0], [
    4,
    16,
    67,
    100_000,
  ]]
) {
  Deno.test(`rope matches rotate_half reference (heads=${nHeads}, headDim=${headDim}, T=${T}, pos0=${pos0})`, async () => {
    await check(nHeads, headDim, T, pos0);
  });
}

Deno.test("rope rotates columns col0.. of longer rows in place and leaves the rest", async () => {
  const gpu = await getGpu();
  const nHeads = 3, headDim = 8, T = 5, ld = 17, col0 = 9, pos0 = 9;
  const rows = nHeads * headDim;
  const cache = randomF32(rows * ld, 42, -2, 2);
  const { cos, sin } = ropeTables(invFreq(headDim), T, pos0);
  const tx = await Tensor.from(gpu, cache, [rows, ld], "cache");
  const tc = await Tensor.from(gpu, cos, [T, headDim / 2], "cos");
  const ts = await Tensor.from(gpu, sin, [T, headDim / 2], "sin");
  rope(gpu, tx.all, tc.all, ts.all, nHeads, headDim, T, { ld, col0 });
  const got = await tx.toF32();
  for (const t of [tx, tc, ts]) t.release();
  const dense = new Float32Array(rows * T);
  for (let r = 0; r < rows; r++) dense.set(cache.subarray(r * ld + col0, r * ld + col0 + T), r * T);
  const rotated = ropeRef(dense, cos, sin, nHeads, headDim, T);
  const want = cache.slice();
  for (let r = 0; r < rows; r++) want.set(rotated.subarray(r * T, (r + 1) * T), r * ld + col0);
  assertClose(got, want, 1e-6, 1e-6, "rope in cache");
});

Deno.test("rope covers more than 65,535 workgroups (2-D grid)", async () => {
  await check(1, 2, 65_536 * 64 + 13, 0);
});

Deno.test("ropeTables rows for pos0 match the later rows of a longer table", () => {
  const inv = invFreq(32, 500_000);
  const long = ropeTables(inv, 300), tail = ropeTables(inv, 100, 200);
  assertClose(tail.cos, long.cos.subarray(200 * 16), 0, 0, "cos");
  assertClose(tail.sin, long.sin.subarray(200 * 16), 0, 0, "sin");
});

Deno.test("ropeTables takes angles in float64 at long positions", () => {
  const inv = invFreq(8);
  const pos = 1_000_003;
  const { cos, sin } = ropeTables(inv, 1, pos);
  for (let d = 0; d < 4; d++) {
    const a = pos * inv[d];
    assertClose([cos[d], sin[d]], [Math.fround(Math.cos(a)), Math.fround(Math.sin(a))], 0, 0);
  }
  // f32 angles at this position would be off by up to ~0.03 rad.
  const a32 = Math.fround(Math.fround(pos) * Math.fround(inv[0]));
  if (Math.abs(a32 - pos * inv[0]) > 0.01) throw new Error("f32 angles unexpectedly exact");
});

Deno.test("rope rejects an odd headDim", async () => {
  const gpu = await getGpu();
  const b = { buffer: gpu.createBuffer(64, "tiny") };
  let msg = "";
  try {
    rope(gpu, b, b, b, 1, 3, 1);
  } catch (e) {
    msg = (e as Error).message;
  }
  gpu.releaseBuffer(b.buffer);
  if (!msg.includes("even")) throw new Error(`expected an odd-headDim error, got "${msg}"`);
});
