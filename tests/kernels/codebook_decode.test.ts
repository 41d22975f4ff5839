import { getGpu } from "../../src/gpu/device.ts";
import { Tensor } from "../../src/gpu/tensor.ts";
import { decodeCodebookBoth } from "../../src/kernels/codebook_decode.ts";
import { Rng } from "../../src/util/rng.ts";
import { decodeBothRef } from "../reference/codebook_decode.ts";
import { assertClose, randomF32 } from "../util.ts";

// Shapes: out a multiple of d, a ragged last vector (out % d != 0), rows past one workgroup,
// d = 1, and a codebook read at a nonzero offset (as the student's concatenated codebooks are).
for (
  const [inDim, out, d, n, cOff] of [
    [256, 768, 4, 256, 0],
    [70, 10, 4, 16, 0],
    [129, 33, 8, 300, 64],
    [5, 7, 1, 3, 128],
  ]
) {
  Deno.test(`decodeCodebookBoth matches the reference (in ${inDim}, out ${out}, d ${d})`, async () => {
    const gpu = await getGpu();
    const rng = new Rng(inDim * 31 + out);
    const cols = Math.ceil(out / d);
    const cent = randomF32(n * d, inDim + out, -1, 1);
    const codes = new Uint32Array(inDim * cols).map(() => rng.int(n));
    // The codebook sits cOff floats into its buffer, after garbage.
    const padded = new Float32Array(cOff + cent.length).fill(1e9);
    padded.set(cent, cOff);
    const tc = await Tensor.from(gpu, padded, [padded.length], "cent");
    const tcodes = await Tensor.from(gpu, codes, [codes.length], "codes");
    const twT = Tensor.empty(gpu, [inDim, out], "wT"), tw = Tensor.empty(gpu, [out, inDim], "w");
    decodeCodebookBoth(
      gpu,
      { buffer: tc.buffer, offset: cOff * 4, size: cent.length * 4 },
      tcodes.all,
      twT.all,
      tw.all,
      inDim,
      out,
      d,
    );
    const want = decodeBothRef(cent, codes, inDim, out, d);
    assertClose(await twT.toF32(), want.wT, 0, 0, "wT");
    assertClose(await tw.toF32(), want.w, 0, 0, "w");
    for (const t of [tc, tcodes, twT, tw]) t.release();
  });
}
