import { getGpu } from "../../src/gpu/device.ts";
import { Tensor } from "../../src/gpu/tensor.ts";
import { transpose } from "../../src/kernels/transpose.ts";
import { assertClose, randomF32 } from "../util.ts";

function transposeRef(src: Float32Array, R: number, C: number, batch: number): Float32Array {
  const out = new Float32Array(src.length);
  for (let b = 0; b < batch; b++) {
    for (let r = 0; r < R; r++) {
      for (let c = 0; c < C; c++) out[(b * C + c) * R + r] = src[(b * R + r) * C + c];
    }
  }
  return out;
}

for (
  const [R, C, batch] of [[1, 1, 1], [1, 7, 1], [7, 1, 2], [3, 5, 1], [67, 130, 3], [1025, 4099, 1]]
) {
  Deno.test(`transpose matches reference (R=${R}, C=${C}, batch=${batch})`, async () => {
    const gpu = await getGpu();
    const src = randomF32(R * C * batch, R + C);
    const ts = await Tensor.from(gpu, src, [src.length], "src");
    const td = Tensor.empty(gpu, [src.length], "dst");
    transpose(gpu, ts.all, td.all, R, C, batch);
    const got = await td.toF32();
    assertClose(got, transposeRef(src, R, C, batch), 0, 0, "dst");
    // Transposing back gives the source.
    transpose(gpu, td.all, ts.all, C, R, batch);
    assertClose(await ts.toF32(), src, 0, 0, "round trip");
    ts.release();
    td.release();
  });
}

Deno.test("transpose reads and writes ranges at offsets", async () => {
  const gpu = await getGpu();
  const R = 9, C = 13, off = 64;
  const src = randomF32(off + R * C, 3);
  const ts = await Tensor.from(gpu, src, [src.length], "src");
  const td = await Tensor.from(gpu, new Float32Array(off + R * C).fill(-1), [off + R * C], "dst");
  transpose(
    gpu,
    { buffer: ts.buffer, offset: off * 4 },
    { buffer: td.buffer, offset: off * 4 },
    R,
    C,
  );
  const got = await td.toF32();
  assertClose(got.subarray(0, off), new Float32Array(off).fill(-1), 0, 0, "untouched");
  assertClose(got.subarray(off), transposeRef(src.subarray(off), R, C, 1), 0, 0, "dst");
  ts.release();
  td.release();
});
