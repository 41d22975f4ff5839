import { getGpu } from "../../src/gpu/device.ts";
import { Tensor } from "../../src/gpu/tensor.ts";
import {
  buildCodeIndex,
  codebookGrad,
  codeChunkRows,
  type CodeIndex,
  decodeFromIndex,
  type GpuCodeIndex,
  prepareCodeIndex,
  uploadCodeIndex,
} from "../../src/kernels/codebook.ts";
import { Rng } from "../../src/util/rng.ts";
import { dot64, finiteDiff } from "../reference/backward.ts";
import { codebookGradRef, decodeCodebookRef, decodeFromIndexRef } from "../reference/codebook.ts";
import { assertClose, randomF32 } from "../util.ts";

function randomCodes(count: number, n: number, seed: number): Uint32Array {
  const rng = new Rng(seed);
  return Uint32Array.from({ length: count }, () => rng.int(n));
}

/** Every item once, sorted by (chunk, key, item), pieces within their segment, slots by key. */
function checkIndex(ix: CodeIndex, codes: ArrayLike<number>, P: number): void {
  const nv = ix.inDim * ix.cols, chunkItems = ix.chunkRows * ix.cols;
  const seen = new Uint8Array(nv);
  const chunks = ix.chunkPieces.length - 1;
  for (let c = 0; c < chunks; c++) {
    for (let k = 0; k < ix.n; k++) {
      const s = c * ix.n + k;
      for (let q = ix.offsets[s]; q < ix.offsets[s + 1]; q++) {
        const v = ix.positions[q];
        if (codes[v] !== k || Math.floor(v / chunkItems) !== c || seen[v]) {
          throw new Error(`index entry ${q} (item ${v}) misplaced`);
        }
        if (q > ix.offsets[s] && ix.positions[q - 1] >= v) throw new Error(`unsorted at ${q}`);
        seen[v] = 1;
      }
    }
  }
  if (seen.some((x) => x === 0)) throw new Error("an item is missing from the index");
  const np = ix.pieces.length / 3;
  const slotSeen = new Uint8Array(np);
  let covered = 0;
  for (let pc = 0; pc < np; pc++) {
    const [a, b, slot] = ix.pieces.subarray(3 * pc, 3 * pc + 3);
    if (!(b > a && b - a <= P)) throw new Error(`piece ${pc} has ${b - a} items`);
    const k = codes[ix.positions[a]];
    if (codes[ix.positions[b - 1]] !== k) throw new Error(`piece ${pc} spans two keys`);
    if (!(slot >= ix.slotOffsets[k] && slot < ix.slotOffsets[k + 1]) || slotSeen[slot]) {
      throw new Error(`piece ${pc} has slot ${slot} outside key ${k}'s slots`);
    }
    slotSeen[slot] = 1;
    covered += b - a;
  }
  if (covered !== nv) throw new Error(`pieces cover ${covered} of ${nv} items`);
}

Deno.test("codebookGradRef matches central differences of the decode", () => {
  const n = 3, d = 3, inDim = 4, out = 7, cols = 3;
  const C = randomF32(n * d, 1), codes = randomCodes(inDim * cols, n, 2);
  const dwT = randomF32(inDim * out, 3);
  const want = finiteDiff((c) => dot64(dwT, decodeCodebookRef(c, codes, inDim, out, d)), C);
  assertClose(codebookGradRef(dwT, codes, n, inDim, out, d), want, 1e-9, 1e-8, "dC");
});

Deno.test("buildCodeIndex sorts by code then position and cuts pieces (one and seven chunks)", () => {
  const n = 37, d = 3, inDim = 200, out = 100, cols = 34;
  const codes = randomCodes(inDim * cols, n, 4);
  for (let v = 0; v < 3000; v++) codes[v * 2] = 5; // a large cluster
  for (const [chunkRows, P] of [[inDim, 4096], [inDim, 7], [32, 5], [16, 1]]) {
    const ix = buildCodeIndex(codes, n, inDim, out, d, { chunkRows, pieceItems: P });
    checkIndex(ix, codes, P);
  }
  const one = buildCodeIndex(codes, n, inDim, out, d);
  if (one.offsets.length !== n + 1) throw new Error(`offsets has ${one.offsets.length} entries`);
});

Deno.test("buildCodeIndex names a code outside [0, n)", () => {
  let msg = "";
  try {
    buildCodeIndex(new Uint32Array([0, 1, 9, 2]), 9, 2, 4, 2);
  } catch (e) {
    msg = (e as Error).message;
  }
  if (!msg.includes("code 9 at row 1, column 0")) throw new Error(`unexpected message "${msg}"`);
});

async function gradOnGpu(
  dwT: Float32Array,
  ix: CodeIndex,
  init?: Float32Array,
): Promise<Float32Array> {
  const gpu = await getGpu();
  const gi = await uploadCodeIndex(gpu, ix);
  const tw = await Tensor.from(gpu, dwT, [dwT.length], "dwT");
  const tc = init
    ? await Tensor.from(gpu, init, [init.length], "dC")
    : Tensor.empty(gpu, [ix.n, ix.d], "dC");
  codebookGrad(gpu, tw.all, gi, tc.all, { accumulate: init !== undefined });
  const got = await tc.toF32();
  gi.release();
  tw.release();
  tc.release();
  return got;
}

for (const [n, d, inDim, out, P] of [[1, 1, 1, 1, 4096], [5, 2, 3, 5, 1], [37, 3, 50, 100, 3]]) {
  Deno.test(`codebookGrad matches reference (n=${n}, d=${d}, in=${inDim}, out=${out}, pieces of ${P})`, async () => {
    const cols = Math.ceil(out / d);
    const codes = randomCodes(inDim * cols, n, n + out), dwT = randomF32(inDim * out, inDim);
    const got = await gradOnGpu(dwT, buildCodeIndex(codes, n, inDim, out, d, { pieceItems: P }));
    assertClose(got, codebookGradRef(dwT, codes, n, inDim, out, d), 1e-6, 1e-5, "dC");
  });
}

// A planted cluster of 200,000 vectors (code 5 of n = 37, d = 3, out = 100: the last vector of
// each row has one valid component), with large values at its first and last vectors.
function planted() {
  const n = 37, d = 3, inDim = 7000, out = 100, cols = 34;
  const codes = randomCodes(inDim * cols, n, 7);
  const rng = new Rng(8);
  let placed = 0;
  for (let v = 0; v < codes.length && placed < 200_000; v++) {
    if (rng.next() < 0.85 || codes.length - v <= 200_000 - placed) {
      codes[v] = 5;
      placed++;
    } else if (codes[v] === 5) codes[v] = 6;
  }
  const last = codes.lastIndexOf(5), first = codes.indexOf(5);
  const dwT = randomF32(inDim * out, 9, -0.01, 0.01);
  const at = (v: number, j: number) => Math.floor(v / cols) * out + (v % cols) * d + j;
  dwT[at(last, 0)] = 1000;
  dwT[at(first, 0)] = -300;
  return { n, d, inDim, out, cols, codes, dwT, placed };
}

Deno.test("codebookGrad sums a planted 200,000-vector cluster (one chunk and seven)", async () => {
  const { n, d, inDim, out, codes, dwT, placed } = planted();
  if (placed !== 200_000) throw new Error(`planted ${placed} vectors`);
  const want = codebookGradRef(dwT, codes, n, inDim, out, d);
  // 7 chunks of 1008 rows (1008 * 400 bytes is a multiple of 256).
  for (const chunkRows of [inDim, 1008]) {
    const ix = buildCodeIndex(codes, n, inDim, out, d, { chunkRows });
    if (ix.maxSlots < 49) throw new Error(`the big cluster has ${ix.maxSlots} pieces`);
    const got = await gradOnGpu(dwT, ix);
    assertClose(got, want, 1e-4, 1e-5, `dC (chunkRows ${chunkRows})`);
    assertClose([got[5 * d]], [want[5 * d]], 0, 1e-5, "planted component");
  }
});

Deno.test("codebookGrad is deterministic and accumulates", async () => {
  const { n, d, inDim, out, codes, dwT } = planted();
  const ix = buildCodeIndex(codes, n, inDim, out, d);
  const a = await gradOnGpu(dwT, ix), b = await gradOnGpu(dwT, ix);
  assertClose(a, b, 0, 0, "two runs");
  const init = randomF32(n * d, 10);
  const c = await gradOnGpu(dwT, ix, init);
  assertClose(c, a.map((v, i) => Math.fround(init[i] + v)), 0, 0, "accumulated");
});

Deno.test("prepareCodeIndex chunks like the device needs and rejects misaligned chunks", async () => {
  const gpu = await getGpu();
  const rows = codeChunkRows(gpu.limits, 100_000, 4099);
  if (!(rows < 100_000 && rows * 4099 * 4 <= gpu.limits.maxBinding)) {
    throw new Error(`codeChunkRows gave ${rows}`);
  }
  if (((rows * 4099 * 4) % gpu.limits.align) !== 0) throw new Error("unaligned chunk");
  const n = 4, d = 2, inDim = 10, out = 5, cols = 3;
  const codes = randomCodes(inDim * cols, n, 11);
  const gi = await prepareCodeIndex(gpu, codes, n, inDim, out, d);
  if (gi.index.chunkRows !== inDim) throw new Error("a small layer should be one chunk");
  gi.release();
  const bad = await uploadCodeIndex(gpu, buildCodeIndex(codes, n, inDim, out, d, { chunkRows: 3 }));
  const b = { buffer: gpu.createBuffer(inDim * out * 4, "dwT") };
  let msg = "";
  try {
    codebookGrad(gpu, b, bad, b);
  } catch (e) {
    msg = (e as Error).message;
  }
  bad.release();
  gpu.releaseBuffer(b.buffer);
  if (!msg.includes("aligned")) throw new Error(`expected an alignment error, got "${msg}"`);
});

/** Bit pattern the guard floats around W^T are filled with: must survive decodeFromIndex. */
const GUARD = 0x7fc0dead;
const GUARD_FLOATS = 64; // 256 bytes: keeps the W^T range's offset binding-aligned

/**
 * decodeFromIndex of `index` (uploaded here unless it already is; released) into a W^T range inside a buffer prefilled with GUARD
 * (so an unwritten element shows), with GUARD_FLOATS guard floats on each side, checked intact.
 */
async function decodeIndexOnGpu(
  C: Float32Array,
  index: CodeIndex | GpuCodeIndex,
): Promise<Float32Array> {
  const gpu = await getGpu();
  const gi = "ix" in index ? index : await uploadCodeIndex(gpu, index);
  const { inDim, out, d } = gi.index;
  const size = inDim * out;
  const init = new Uint32Array(size + 2 * GUARD_FLOATS).fill(GUARD);
  const tc = await Tensor.from(gpu, C, [C.length], "centroids");
  const tw = await Tensor.from(gpu, init, [init.length], "wT");
  const range = { buffer: tw.buffer, offset: GUARD_FLOATS * 4, size: size * 4 };
  decodeFromIndex(gpu, tc.all, gi, range, inDim, out, d);
  const all = new Uint32Array(await gpu.read(tw.buffer, 0, init.length * 4));
  for (const t of [tc, tw]) t.release();
  gi.release();
  const guards = [...all.subarray(0, GUARD_FLOATS), ...all.subarray(GUARD_FLOATS + size)];
  assertClose(guards, new Uint32Array(guards.length).fill(GUARD), 0, 0, "guard words");
  return new Float32Array(all.buffer, GUARD_FLOATS * 4, size);
}

/** decodeFromIndex against decodeFromIndexRef and, bit for bit, against decodeCodebookRef. */
async function checkDecodeFromIndex(C: Float32Array, codes: Uint32Array, ix: CodeIndex) {
  const { inDim, out, d } = ix;
  const got = await decodeIndexOnGpu(C, ix);
  assertClose(got, decodeFromIndexRef(C, ix), 0, 0, "wT vs reference");
  const fromCodes = Float32Array.from(decodeCodebookRef(C, codes, inDim, out, d));
  const bits = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);
  assertClose(bits(got), bits(fromCodes), 0, 0, "wT bits vs decodeCodebookRef");
}

Deno.test("decodeFromIndexRef equals decodeCodebookRef", () => {
  const n = 11, d = 3, inDim = 20, out = 13, cols = 5;
  const C = randomF32(n * d, 12), codes = randomCodes(inDim * cols, n, 13);
  for (const [chunkRows, P] of [[inDim, 4096], [6, 2]]) {
    const ix = buildCodeIndex(codes, n, inDim, out, d, { chunkRows, pieceItems: P });
    assertClose(decodeFromIndexRef(C, ix), decodeCodebookRef(C, codes, inDim, out, d), 0, 0);
  }
});

// [n, d, inDim, out, splits, chunkRows (0: one chunk), pieceItems]: out not a multiple of d
// (and below d), several splits (codes of split s shifted by s * n as CodebookTrainer does),
// forced row chunks (out = 64: every row is 256 bytes, so any chunk is aligned), one-item pieces.
for (
  const [n, d, inDim, out, splits, chunkRows, P] of [
    [5, 1, 1, 1, 1, 0, 4096],
    [37, 3, 50, 100, 1, 0, 7],
    [3, 8, 9, 5, 1, 0, 4096],
    [16, 4, 40, 22, 4, 0, 3],
    [64, 4, 67, 64, 2, 16, 5],
    [9, 5, 33, 64, 3, 4, 1],
  ]
) {
  Deno.test(`decodeFromIndex matches both references (n=${n}, d=${d}, in=${inDim}, out=${out}, splits=${splits}, chunkRows=${chunkRows}, pieces of ${P})`, async () => {
    const cols = Math.ceil(out / d), count = inDim * cols, perSplit = (inDim / splits) * cols;
    const codes = randomCodes(count, n, 100 + n + out);
    for (let i = 0; i < count; i++) codes[i] += Math.floor(i / perSplit) * n;
    const entries = splits * n;
    const C = randomF32(entries * d, 200 + d);
    const ix = buildCodeIndex(codes, entries, inDim, out, d, {
      chunkRows: chunkRows || inDim,
      pieceItems: P,
    });
    if (chunkRows && ix.chunkPieces.length - 1 < 2) throw new Error("expected several chunks");
    await checkDecodeFromIndex(C, codes, ix);
  });
}

Deno.test("decodeFromIndex writes a planted 200,000-vector cluster (pieces of 4096, one chunk and seven)", async () => {
  const { n, d, inDim, out, codes } = planted();
  const C = randomF32(n * d, 14);
  for (const chunkRows of [inDim, 1008]) {
    const ix = buildCodeIndex(codes, n, inDim, out, d, { chunkRows });
    if (ix.maxSlots < 49) throw new Error(`the big cluster has ${ix.maxSlots} pieces`);
    await checkDecodeFromIndex(C, codes, ix);
  }
});

Deno.test("decodeFromIndex binds W^T past the binding limit in the index's row chunks", async () => {
  const gpu = await getGpu();
  const n = 300, d = 3, out = 4099;
  const inDim = Math.ceil(gpu.limits.maxBinding / (out * 4)) + 5; // just over one binding
  const C = randomF32(n * d, 15), codes = randomCodes(inDim * Math.ceil(out / d), n, 16);
  const gi = await prepareCodeIndex(gpu, codes, n, inDim, out, d);
  const ix = gi.index;
  if (ix.chunkPieces.length - 1 < 2) throw new Error("expected several chunks");
  const got = await decodeIndexOnGpu(C, gi); // releases gi
  const fromCodes = Float32Array.from(decodeCodebookRef(C, codes, inDim, out, d));
  const bits = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);
  assertClose(bits(got), bits(fromCodes), 0, 0, "wT bits vs decodeCodebookRef");
  const cols = Math.ceil(out / d);
  for (const r0 of [0, ix.chunkRows - 3, inDim - 4]) {
    const want = decodeCodebookRef(C, codes.subarray(r0 * cols, (r0 + 4) * cols), 4, out, d);
    assertClose(got.subarray(r0 * out, (r0 + 4) * out), want, 0, 0, `rows ${r0}..${r0 + 3}`);
  }
});

Deno.test("decodeFromIndex rejects an index of another shape", async () => {
  const gpu = await getGpu();
  const codes = randomCodes(6, 4, 17);
  const gi = await uploadCodeIndex(gpu, buildCodeIndex(codes, 4, 2, 5, 2));
  const b = { buffer: gpu.createBuffer(64, "buf") };
  let msg = "";
  try {
    decodeFromIndex(gpu, b, gi, b, 2, 6, 2);
  } catch (e) {
    msg = (e as Error).message;
  }
  gi.release();
  gpu.releaseBuffer(b.buffer);
  if (!msg.includes("not [2, 6]")) throw new Error(`unexpected message "${msg}"`);
});
