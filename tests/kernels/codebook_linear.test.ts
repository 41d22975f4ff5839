import { codeBits, packCodes } from "../../src/io/pack.ts";
import { getGpu, type Gpu } from "../../src/gpu/device.ts";
import {
  chooseForm,
  type CodebookForm,
  type CodebookLayer,
  codebookLinear,
  formsFor,
} from "../../src/kernels/codebook_linear.ts";
import { Rng } from "../../src/util/rng.ts";
import { codebookLinearRef, expectErrors } from "../reference/codebook_linear.ts";
import { assertClose, randomF32 } from "../util.ts";
import { withMaxBinding } from "../util.ts";

const FORMS: CodebookForm[] = ["matvec", "lut", "tile"];

interface Case {
  in: number;
  out: number;
  d: number;
  n: number;
  splits?: number;
  N: number;
  /** Token-major output [N, out] instead of feature-major [out, N]. */
  tokenMajor?: boolean;
  accumulate?: boolean;
  xOffset?: number;
  yOffset?: number;
  /** Extra elements per x^T row (ldx = N + ldxPad). */
  ldxPad?: number;
  /** x is zero except row in - 1. */
  lastRowOnly?: boolean;
  seed?: number;
}

async function upload(gpu: Gpu, data: Float32Array | Uint32Array, label: string) {
  const b = gpu.createBuffer(data.byteLength, label);
  await gpu.write(b, data);
  return b;
}

/** Runs one case through `form` and compares the whole output buffer with the reference. */
async function check(form: CodebookForm, c: Case): Promise<void> {
  const gpu = await getGpu();
  const splits = c.splits ?? 1, seed = c.seed ?? 1;
  const cols = Math.ceil(c.out / c.d), bits = codeBits(c.n);
  const rng = new Rng(seed);
  const codes = Uint32Array.from({ length: c.in * cols }, () => rng.int(c.n));
  codes[codes.length - 1] = c.n - 1; // the widest code, at the far end of the stream
  codes[0] = c.n - 1;
  const centroids = randomF32(splits * c.n * c.d, seed + 1);
  const ldx = c.N + (c.ldxPad ?? 1), xOffset = c.xOffset ?? 3, yOffset = c.yOffset ?? 5;
  const x = randomF32(xOffset + c.in * ldx + 2, seed + 2);
  if (c.lastRowOnly) {
    x.fill(0);
    for (let t = 0; t < c.N; t++) x[xOffset + (c.in - 1) * ldx + t] = 1.5 + t;
  }
  const ldy = c.tokenMajor ? c.out + 2 : c.N + 1;
  const yRow = c.tokenMajor ? 1 : ldy, yCol = c.tokenMajor ? ldy : 1;
  const ySize = yOffset + (c.tokenMajor ? c.N : c.out) * ldy + 3;
  const y0 = randomF32(ySize, seed + 3);
  const words = packCodes(codes, bits);
  const layer: CodebookLayer = {
    in: c.in,
    out: c.out,
    d: c.d,
    n: c.n,
    splits,
    bits,
    centroids: await upload(gpu, centroids, "centroids"),
    codes: await upload(gpu, words, "codes"),
  };
  const xb = await upload(gpu, x, "x"), yb = await upload(gpu, y0, "y");
  const io = { N: c.N, xOffset, ldx, yOffset, yRow, yCol, accumulate: c.accumulate };
  try {
    codebookLinear(gpu, layer, { ...io, x: xb, y: yb }, form);
    const got = new Float32Array(await gpu.read(yb, 0, ySize * 4));
    const want = codebookLinearRef(
      { ...c, splits, centroids, codes: { words, bits } },
      x,
      y0,
      io,
    );
    const label = `${form} in=${c.in} out=${c.out} d=${c.d} n=${c.n} splits=${splits} N=${c.N}` +
      `${c.tokenMajor ? " token-major" : ""}${c.accumulate ? " accumulate" : ""}`;
    assertClose(got, want, 2e-5, 2e-5, label);
  } finally {
    for (const b of [layer.centroids, layer.codes, xb, yb]) gpu.releaseBuffer(b);
  }
}

for (const form of FORMS) {
  Deno.test(`${form} form matches the reference with n = 37 and out not a multiple of d`, async () => {
    await check(form, { in: 64, out: 30, d: 4, n: 37, N: 1 });
    await check(form, { in: 50, out: 31, d: 3, n: 37, N: 3, tokenMajor: true, accumulate: true });
  });

  Deno.test(`${form} form handles n = 1000 (10-bit codes) with four codebooks`, async () => {
    await check(form, { in: 40, out: 21, d: 5, n: 1000, splits: 4, N: 1, accumulate: true });
  });

  Deno.test(`${form} form handles N = 1, 3 and 8 in both output layouts with offsets`, async () => {
    for (const [N, tokenMajor] of [[1, true], [3, false], [8, true], [8, false]] as const) {
      await check(form, {
        in: 36,
        out: 18,
        d: 2,
        n: 50,
        splits: 3,
        N,
        tokenMajor,
        accumulate: N === 3,
        xOffset: 8,
        yOffset: 12,
        ldxPad: N === 8 ? 0 : 3,
      });
    }
  });

  Deno.test(`${form} form finds the answer planted at row 69,999 of 70,000`, async () => {
    await check(form, { in: 70_000, out: 5, d: 2, n: 37, N: 1, lastRowOnly: true });
    await check(form, {
      in: 70_000,
      out: 3,
      d: 3,
      n: 5,
      splits: 2,
      N: 3,
      lastRowOnly: true,
      tokenMajor: true,
      accumulate: true,
    });
  });
}

Deno.test("matvec and tile forms handle every code width from 1 to 16 bits", async () => {
  // n = 2^(b-1) + 1 (the smallest codebook of b bits; 2 and 65,536 at the ends); d varies so
  // that rows start at every bit offset.
  for (let b = 1; b <= 16; b++) {
    const n = b === 1 ? 2 : b === 16 ? 65536 : 2 ** (b - 1) + 1;
    const d = 1 + (b % 5);
    for (const form of ["matvec", "tile"] as const) {
      await check(form, { in: 9, out: 4 * d + 1, d, n, N: form === "tile" ? 5 : 2, seed: b });
    }
  }
});

Deno.test("lut form handles every code width its table fits (1 to 10 bits)", async () => {
  for (let b = 1; b <= 10; b++) {
    const n = b === 1 ? 2 : 2 ** (b - 1) + 1;
    const d = 1 + (b % 5);
    await check("lut", { in: 9, out: 4 * d + 1, d, n, N: 1, seed: b });
  }
});

Deno.test("matvec and tile forms handle a codebook of 65,536 entries split in two", async () => {
  for (const form of ["matvec", "tile"] as const) {
    await check(form, { in: 24, out: 13, d: 4, n: 65536, splits: 2, N: 4, seed: 7 });
  }
});

Deno.test("matvec and tile forms widen small centroids (several codes per entry, padding)", async () => {
  // d = 1 with 3-bit codes: 4 codes per entry; d = 1 with 6 bits and d = 2: 2 per entry; d = 6:
  // entries padded to 8. Odd column counts put super-codes across row ends.
  const cases: Case[] = [
    { in: 21, out: 15, d: 1, n: 8, splits: 3, N: 2 },
    { in: 12, out: 9, d: 1, n: 50, N: 3, tokenMajor: true },
    { in: 16, out: 13, d: 2, n: 64, splits: 2, N: 1, accumulate: true },
    { in: 10, out: 27, d: 6, n: 300, splits: 2, N: 5 },
  ];
  for (const c of cases) {
    for (const form of ["matvec", "tile"] as const) await check(form, { ...c, seed: c.n });
  }
});

Deno.test("tile form handles N = 37 and 130 (not multiples of its 16-token blocks)", async () => {
  await check("tile", { in: 33, out: 70, d: 4, n: 100, splits: 3, N: 37, accumulate: true });
  await check("tile", { in: 20, out: 13, d: 3, n: 9, N: 130, tokenMajor: true, ldxPad: 0 });
});

Deno.test("tile form handles d = 16 and d = 33 (fewer token quads per invocation)", async () => {
  await check("tile", { in: 10, out: 40, d: 16, n: 7, N: 9 });
  await check("tile", { in: 10, out: 70, d: 33, n: 7, N: 9, tokenMajor: true });
});

Deno.test("matvec and lut forms handle N = 19 (chunks of 8 tokens)", async () => {
  for (const form of ["matvec", "lut"] as const) {
    await check(form, { in: 30, out: 17, d: 4, n: 20, N: 19, tokenMajor: true });
  }
});

Deno.test("lut form refuses a table larger than workgroup memory", async () => {
  let msg = "";
  try {
    await check("lut", { in: 8, out: 8, d: 2, n: 2000, N: 1 });
  } catch (e) {
    msg = (e as Error).message;
  }
  if (!msg.includes("lut form")) throw new Error(`expected the lut refusal, got "${msg}"`);
});

Deno.test("codebookLinear rejects bad arguments with clear messages", async () => {
  const gpu = await getGpu();
  const c = gpu.createBuffer(64 * 4, "c"), k = gpu.createBuffer(64, "k");
  const x = gpu.createBuffer(64 * 4, "x"), y = gpu.createBuffer(64 * 4, "y");
  const layer: CodebookLayer = {
    in: 8,
    out: 8,
    d: 2,
    n: 4,
    splits: 1,
    bits: 2,
    centroids: c,
    codes: k,
  };
  const io = { N: 1, x, ldx: 1, y, yRow: 1, yCol: 1 };
  const cases: [string, () => void][] = [
    ["N = 0", () => codebookLinear(gpu, layer, { ...io, N: 0 })],
    ["splits = 3 does not divide", () => codebookLinear(gpu, { ...layer, splits: 3 }, io)],
    ["bits = 3", () => codebookLinear(gpu, { ...layer, bits: 3 }, io)],
    ["x and y", () => codebookLinear(gpu, layer, { ...io, y: x })],
    ["need", () => codebookLinear(gpu, { ...layer, in: 512 }, io)],
    ["overlap", () => codebookLinear(gpu, layer, { ...io, N: 2, yRow: 1, yCol: 1, ldx: 2 })],
  ];
  try {
    expectErrors(cases);
    // A buffer bound whole past the binding limit (a Gpu with a 1 KiB limit).
    const small = withMaxBinding(gpu, 1024);
    const big = gpu.createBuffer(4096, "big codes");
    expectErrors([["binding limit", () => codebookLinear(small, { ...layer, codes: big }, io)]]);
    gpu.releaseBuffer(big);
  } finally {
    for (const b of [c, k, x, y]) gpu.releaseBuffer(b);
  }
});

Deno.test("chooseForm picks a form that can run the shape", () => {
  const layer = { in: 4096, out: 4096, d: 4, n: 256, splits: 1, bits: 8 } as CodebookLayer;
  for (const n of [16, 256, 4096, 65536]) {
    for (const N of [1, 3, 8, 9, 512]) {
      const l = { ...layer, n, bits: codeBits(n) };
      const f = chooseForm(l, N);
      if (!formsFor(l, N).includes(f)) throw new Error(`chooseForm(n=${n}, N=${N}) = ${f}`);
    }
  }
});
