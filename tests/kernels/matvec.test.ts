import { getGpu, type Gpu } from "../../src/gpu/device.ts";
import { denseMatvec, MATVEC_MAX_N, rowsMatvec } from "../../src/kernels/matvec.ts";
import { denseMatvecRef, expectErrors, rowsMatvecRef } from "../reference/codebook_linear.ts";
import { assertClose, randomF32 } from "../util.ts";
import { withMaxBinding } from "../util.ts";

type Kind = "dense" | "rows";

interface Case {
  in: number;
  out: number;
  N: number;
  tokenMajor?: boolean;
  accumulate?: boolean;
  xOffset?: number;
  yOffset?: number;
  /** Extra elements per x^T row (ldx = N + ldxPad). */
  ldxPad?: number;
  /** Only input in - 1 is non-zero (x and W). */
  lastOnly?: boolean;
  /** Run on a Gpu whose binding limit is this many bytes (W then binds in row chunks). */
  maxBinding?: number;
}

async function upload(gpu: Gpu, data: Float32Array, label: string) {
  const b = gpu.createBuffer(data.byteLength, label);
  await gpu.write(b, data);
  return b;
}

/** Runs one case and compares the whole output buffer with the reference. */
async function check(kind: Kind, c: Case): Promise<void> {
  const gpu = await getGpu();
  const run = c.maxBinding ? withMaxBinding(gpu, c.maxBinding) : gpu;
  const seed = c.in * 31 + c.out * 7 + c.N;
  // dense: W^T [in, out]; rows: W [out, in]
  const w = randomF32(c.in * c.out, seed);
  const ldx = c.N + (c.ldxPad ?? 1), xOffset = c.xOffset ?? 3, yOffset = c.yOffset ?? 5;
  const x = randomF32(xOffset + c.in * ldx + 2, seed + 1);
  if (c.lastOnly) {
    x.fill(0);
    for (let t = 0; t < c.N; t++) x[xOffset + (c.in - 1) * ldx + t] = 1.5 + t;
    for (let m = 0; m < c.out; m++) {
      for (let i = 0; i < c.in - 1; i++) w[kind === "dense" ? i * c.out + m : m * c.in + i] = 0;
    }
  }
  const ldy = c.tokenMajor ? c.out + 2 : c.N + 1;
  const yRow = c.tokenMajor ? 1 : ldy, yCol = c.tokenMajor ? ldy : 1;
  const ySize = yOffset + (c.tokenMajor ? c.N : c.out) * ldy + 3;
  const y0 = randomF32(ySize, seed + 2);
  const wb = await upload(gpu, w, "w"), xb = await upload(gpu, x, "x");
  const yb = await upload(gpu, y0, "y");
  const io = { N: c.N, xOffset, ldx, yOffset, yRow, yCol, accumulate: c.accumulate };
  try {
    if (kind === "dense") denseMatvec(run, wb, c.in, c.out, { ...io, x: xb, y: yb });
    else rowsMatvec(run, wb, c.out, c.in, { ...io, x: xb, y: yb });
    const got = new Float32Array(await gpu.read(yb, 0, ySize * 4));
    const want = kind === "dense"
      ? denseMatvecRef(w, c.in, c.out, x, y0, io)
      : rowsMatvecRef(w, c.out, c.in, x, y0, io);
    const label = `${kind} in=${c.in} out=${c.out} N=${c.N}${c.tokenMajor ? " token-major" : ""}` +
      `${c.accumulate ? " accumulate" : ""}${c.maxBinding ? ` maxBinding=${c.maxBinding}` : ""}`;
    assertClose(got, want, 2e-5, 2e-5, label);
  } finally {
    for (const b of [wb, xb, yb]) gpu.releaseBuffer(b);
  }
}

for (const kind of ["dense", "rows"] as const) {
  Deno.test(`${kind}Matvec matches the reference at N = 1, 3, 8 in both layouts with offsets`, async () => {
    for (const [N, tokenMajor] of [[1, false], [3, true], [8, false], [8, true]] as const) {
      await check(kind, { in: 70, out: 44, N, tokenMajor, accumulate: N === 3 });
    }
  });

  Deno.test(`${kind}Matvec handles sizes that are not multiples of 4 (scalar loads, tails)`, async () => {
    await check(kind, { in: 37, out: 33, N: 1, xOffset: 1 });
    await check(kind, { in: 5, out: 7, N: 2, tokenMajor: true, accumulate: true });
    await check(kind, { in: 131, out: 9, N: 8, yOffset: 0 });
  });

  Deno.test(`${kind}Matvec reads x^T as vec4 when aligned (ldx = N = 4, 8; ldx = 1)`, async () => {
    await check(kind, { in: 64, out: 48, N: 4, ldxPad: 0, xOffset: 8 });
    await check(kind, { in: 64, out: 48, N: 8, ldxPad: 0, xOffset: 0, tokenMajor: true });
    await check(kind, { in: 68, out: 40, N: 1, ldxPad: 0, xOffset: 4, accumulate: true });
  });

  Deno.test(`${kind}Matvec handles N = 19 (chunks of ${MATVEC_MAX_N} tokens)`, async () => {
    await check(kind, { in: 24, out: 20, N: 19, tokenMajor: true });
  });

  Deno.test(`${kind}Matvec binds W in aligned row chunks past the binding limit`, async () => {
    // W is 300 x 100 f32 (120,000 bytes), the limit 64 KiB: two chunks.
    await check(kind, { in: 300, out: 100, N: 3, maxBinding: 65536 });
    await check(kind, { in: 100, out: 300, N: 1, maxBinding: 65536, tokenMajor: true });
  });
}

Deno.test("denseMatvec finds the answer planted at row 69,999 of 70,000", async () => {
  await check("dense", { in: 70_000, out: 6, N: 1, lastOnly: true });
  await check("dense", { in: 70_000, out: 5, N: 3, lastOnly: true, tokenMajor: true });
});

Deno.test("rowsMatvec finds the answer planted at input 249,999 of 250,000", async () => {
  // Four inputs per loop iteration: 62,500 iterations need two dispatches.
  await check("rows", { in: 250_000, out: 2, N: 1, lastOnly: true, ldxPad: 0, xOffset: 0 });
  await check("rows", { in: 250_001, out: 3, N: 2, lastOnly: true });
});

Deno.test("denseMatvec and rowsMatvec reject bad arguments with clear messages", async () => {
  const gpu = await getGpu();
  const w = gpu.createBuffer(64 * 4, "w");
  const x = gpu.createBuffer(64 * 4, "x"), y = gpu.createBuffer(64 * 4, "y");
  const io = { N: 1, x, ldx: 1, y, yRow: 1, yCol: 1 };
  const cases: [string, () => void][] = [
    ["N = 0", () => denseMatvec(gpu, w, 8, 8, { ...io, N: 0 })],
    ["needs", () => denseMatvec(gpu, w, 16, 8, io)],
    ["needs", () => rowsMatvec(gpu, w, 8, 16, io)],
    ["x and y", () => rowsMatvec(gpu, w, 8, 8, { ...io, y: x })],
    ["in = 0", () => rowsMatvec(gpu, w, 8, 0, io)],
  ];
  try {
    expectErrors(cases);
  } finally {
    for (const b of [w, x, y]) gpu.releaseBuffer(b);
  }
});
