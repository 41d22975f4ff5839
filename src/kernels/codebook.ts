// ClusComp codebook kernels for finetuning with fixed codes: decode W^T from centroids and
// codes, and the centroid gradient as deterministic segment sums over a host-built index of the
// codes (also used for the embedding gradient, see backward.ts embedBackward).
import decodeIndexCode from "../../shaders/codebook_decode_index.wgsl" with { type: "text" };
import gradCode from "../../shaders/codebook_grad.wgsl" with { type: "text" };
import { type BufferRange, fits, type Gpu, type GpuLimits, grid } from "../gpu/device.ts";
import { rowChunks } from "../gpu/tensor.ts";

/** Default and largest number of items one invocation sums (the piece length). */
export const PIECE_ITEMS = 4096;
const MAX_PIECE_ITEMS = 32_768;
/** Most pieces one key may have: the reduce pass loops over them. */
export const MAX_SLOTS_PER_KEY = 65_000;

/**
 * Items grouped by key for the segment sums. For a codebook layer the items are the vectors
 * v = r * cols + cv of the codes [inDim, cols] (cols = ceil(out / d)) and the keys are the codes;
 * for the embedding gradient the items are token positions and the keys token ids (cols = 1,
 * d = out = H). The source rows are cut into chunks of `chunkRows` rows (one chunk unless the
 * source exceeds the binding limit); with one chunk, `offsets` [n + 1] and `positions` are the
 * plain CSR: positions[offsets[k] .. offsets[k + 1]) are the items of key k in ascending order.
 */
export interface CodeIndex {
  /**
   * How the source is laid out: "rows", row-major [inDim, out] (W^T's gradient, items are
   * vectors of d neighbouring columns); "features", feature-major [out, inDim] (dx [H, T], items
   * are the inDim columns, cols = 1 and d = out).
   */
  layout: "rows" | "features";
  /** Keys (clusters). */
  n: number;
  /** Source rows (in_features of the layer, or tokens). */
  inDim: number;
  /** Valid columns per source row (out_features, or H). */
  out: number;
  /** Components per item (centroid length). */
  d: number;
  /** Items per row: ceil(out / d). */
  cols: number;
  /** Source rows per bound chunk (inDim when there is one chunk). */
  chunkRows: number;
  /** [chunks * n + 1]: segment s = chunk * n + key holds positions[offsets[s] .. offsets[s+1]). */
  offsets: Uint32Array;
  /** [inDim * cols] item indices sorted by (chunk, key, item). */
  positions: Uint32Array;
  /** [pieces * 3] (start, end, slot): runs of at most pieceItems items of one segment. */
  pieces: Uint32Array;
  /** [chunks + 1]: pieces of chunk c are chunkPieces[c] .. chunkPieces[c + 1] - 1. */
  chunkPieces: Uint32Array;
  /** [n + 1]: key k owns partial rows (slots) slotOffsets[k] .. slotOffsets[k + 1] - 1. */
  slotOffsets: Uint32Array;
  /** Largest slot count of one key. */
  maxSlots: number;
}

/**
 * Builds the index of `codes` [inDim * cols] (row-major [inDim, ceil(out / d)], each < n).
 * `chunkRows` must match how the gradient will be bound (see codeChunkRows); `pieceItems` is
 * the most items one GPU invocation sums.
 */
export function buildCodeIndex(
  codes: ArrayLike<number>,
  n: number,
  inDim: number,
  out: number,
  d: number,
  opts: { chunkRows?: number; pieceItems?: number; layout?: "rows" | "features" } = {},
): CodeIndex {
  const chunkRows = opts.chunkRows ?? inDim;
  const layout = opts.layout ?? "rows";
  if (layout === "features" && (d !== out || chunkRows < inDim)) {
    throw new Error(`buildCodeIndex: a feature-major index needs d = out and one chunk`);
  }
  const P = opts.pieceItems ?? PIECE_ITEMS;
  for (const [name, v] of [["n", n], ["inDim", inDim], ["out", out], ["d", d]] as const) {
    if (!(Number.isInteger(v) && v >= 1)) {
      throw new Error(`buildCodeIndex: ${name} = ${v} must be a positive integer`);
    }
  }
  if (!(Number.isInteger(chunkRows) && chunkRows >= 1)) {
    throw new Error(`buildCodeIndex: chunkRows = ${chunkRows} must be a positive integer`);
  }
  if (!(Number.isInteger(P) && P >= 1 && P <= MAX_PIECE_ITEMS)) {
    throw new Error(`buildCodeIndex: pieceItems = ${P} is outside [1, ${MAX_PIECE_ITEMS}]`);
  }
  const cols = Math.ceil(out / d);
  const nv = inDim * cols;
  if (codes.length !== nv) {
    throw new Error(
      `buildCodeIndex: ${codes.length} codes do not fill [${inDim}, ${cols}] (out ${out}, d ${d})`,
    );
  }
  if (nv >= 2 ** 32) throw new Error(`buildCodeIndex: ${nv} items exceed u32 indices`);
  const chunks = Math.ceil(inDim / chunkRows);
  const chunkItems = chunkRows * cols;
  const segs = chunks * n;
  // Counting sort by segment, stable in item order.
  const offsets = new Uint32Array(segs + 1);
  for (let v = 0; v < nv; v++) {
    const k = codes[v];
    if (!(k >= 0 && k < n && Number.isInteger(k))) {
      throw new Error(
        `buildCodeIndex: code ${k} at row ${Math.floor(v / cols)}, column ${v % cols} is ` +
          `outside [0, ${n})`,
      );
    }
    offsets[Math.floor(v / chunkItems) * n + k + 1]++;
  }
  for (let s = 0; s < segs; s++) offsets[s + 1] += offsets[s];
  const cursor = offsets.slice(0, segs);
  const positions = new Uint32Array(nv);
  for (let v = 0; v < nv; v++) positions[cursor[Math.floor(v / chunkItems) * n + codes[v]]++] = v;
  // Pieces in position order; slots ranked by key, then chunk.
  const slotOffsets = new Uint32Array(n + 1);
  let numPieces = 0;
  for (let s = 0; s < segs; s++) {
    const np = Math.ceil((offsets[s + 1] - offsets[s]) / P);
    slotOffsets[(s % n) + 1] += np;
    numPieces += np;
  }
  let maxSlots = 0;
  for (let k = 0; k < n; k++) {
    maxSlots = Math.max(maxSlots, slotOffsets[k + 1]);
    slotOffsets[k + 1] += slotOffsets[k];
  }
  if (maxSlots > MAX_SLOTS_PER_KEY) {
    throw new Error(
      `buildCodeIndex: one key has ${maxSlots} pieces of ${P} items, more than the ` +
        `${MAX_SLOTS_PER_KEY} one reduce invocation may loop over; use larger pieces`,
    );
  }
  const slotCursor = slotOffsets.slice(0, n);
  const pieces = new Uint32Array(numPieces * 3);
  const chunkPieces = new Uint32Array(chunks + 1);
  let pi = 0;
  for (let c = 0; c < chunks; c++) {
    for (let k = 0; k < n; k++) {
      const s = c * n + k;
      for (let a = offsets[s]; a < offsets[s + 1]; a += P) {
        pieces[3 * pi] = a;
        pieces[3 * pi + 1] = Math.min(a + P, offsets[s + 1]);
        pieces[3 * pi + 2] = slotCursor[k]++;
        pi++;
      }
    }
    chunkPieces[c + 1] = pi;
  }
  return {
    layout,
    n,
    inDim,
    out,
    d,
    cols,
    chunkRows,
    offsets,
    positions,
    pieces,
    chunkPieces,
    slotOffsets,
    maxSlots,
  };
}

/**
 * Rows of W^T [inDim, out] per bound chunk on this device: the whole matrix when it fits one
 * binding, else the largest row count within maxBinding whose byte offsets stay aligned.
 */
export function codeChunkRows(limits: GpuLimits, inDim: number, out: number): number {
  return rowChunks(inDim, out * 4, limits.maxBinding, limits.align)[0].rows;
}

/** A CodeIndex on the GPU, with its partial-sum scratch. */
export interface GpuCodeIndex {
  index: CodeIndex;
  /** u32 [pieces * 3 + n + 1]: the piece triples, then slotOffsets at slotBase. */
  ix: GPUBuffer;
  slotBase: number;
  /**
   * u32 [items], in the order of index.positions: the offset of each item's component 0 within
   * its chunk of the source, bit 31 set on a "rows" vector cut short by the end of its row.
   */
  items: GPUBuffer;
  /** f32 [slots, d]. */
  partial: GPUBuffer;
  release(): void;
}

const PARTIAL = 0x80000000;

/** What uploadCodeIndex writes to the GPU: the ix and items buffers' data, and the slot count. */
export interface CodeIndexData {
  /** u32 [pieces * 3 + n + 1]: the piece triples, then slotOffsets. */
  ix: Uint32Array;
  /** u32 [items]: see GpuCodeIndex.items. */
  items: Uint32Array;
  /** Partial rows (f32 [slots, d] scratch). */
  slots: number;
}

/** The host data of an index's GPU buffers, checked against the binding limits. */
export function codeIndexData(limits: GpuLimits, index: CodeIndex): CodeIndexData {
  const { n, d, out, cols, chunkRows, positions, layout } = index;
  const slots = index.slotOffsets[n];
  const ixLen = index.pieces.length + n + 1;
  const max = limits.maxBinding;
  if (ixLen * 4 > max || slots * d * 4 > max) {
    throw new Error(
      `uploadCodeIndex: ${index.pieces.length / 3} pieces of ${d} components exceed ` +
        `the ${max}-byte binding limit`,
    );
  }
  if (Math.min(chunkRows, index.inDim) * out >= PARTIAL) {
    throw new Error(`uploadCodeIndex: chunks of ${chunkRows} rows exceed u32 offsets`);
  }
  const ix = new Uint32Array(ixLen);
  ix.set(index.pieces);
  ix.set(index.slotOffsets, index.pieces.length);
  const items = new Uint32Array(positions.length);
  if (layout === "features") {
    items.set(positions);
  } else {
    const short = out % d !== 0;
    for (let q = 0; q < positions.length; q++) {
      const v = positions[q], r = Math.floor(v / cols), cv = v - r * cols;
      items[q] = ((r % chunkRows) * out + cv * d + (short && cv === cols - 1 ? PARTIAL : 0)) >>> 0;
    }
  }
  return { ix, items, slots };
}

/** Uploads an index; release() frees its buffers. */
export async function uploadCodeIndex(gpu: Gpu, index: CodeIndex): Promise<GpuCodeIndex> {
  const data = codeIndexData(gpu.limits, index);
  const ix = gpu.createBuffer(data.ix.length * 4, "code index");
  const itemBuf = gpu.createBuffer(data.items.length * 4, "code items");
  const partial = gpu.createBuffer(data.slots * index.d * 4, "code partial sums");
  await gpu.write(ix, data.ix);
  await gpu.write(itemBuf, data.items);
  let released = false;
  return {
    index,
    ix,
    slotBase: index.pieces.length,
    items: itemBuf,
    partial,
    release() {
      if (released) return;
      released = true;
      for (const b of [ix, itemBuf, partial]) gpu.releaseBuffer(b);
    },
  };
}

/** buildCodeIndex with the device's chunking, uploaded. */
export function prepareCodeIndex(
  gpu: Gpu,
  codes: ArrayLike<number>,
  n: number,
  inDim: number,
  out: number,
  d: number,
): Promise<GpuCodeIndex> {
  const chunkRows = codeChunkRows(gpu.limits, inDim, out);
  return uploadCodeIndex(gpu, buildCodeIndex(codes, n, inDim, out, d, { chunkRows }));
}

const WG = 64;

/** The source of segmentSum: the binding of rows [row0, row0 + rows) of each chunk. */
export type SourceChunk = (row0: number, rows: number) => BufferRange;

/** out[k, j] (+)= sum over the items of key k of component j: both passes. */
export function segmentSum(
  gpu: Gpu,
  gi: GpuCodeIndex,
  src: SourceChunk,
  out: BufferRange,
  accumulate: boolean,
  kernel: string,
): void {
  const ix = gi.index;
  const { n, d, cols, chunkRows, inDim } = ix;
  const colStride = ix.layout === "features" ? inDim : 1;
  const tail = ix.out - (cols - 1) * d;
  const chunks = ix.chunkPieces.length - 1;
  const pieces = gpu.pipeline("codebook_grad", gradCode, "segment_pieces");
  const ixBinding = { buffer: gi.ix, offset: 0, size: (gi.slotBase + n + 1) * 4 };
  const partial = { buffer: gi.partial, offset: 0, size: gi.partial.size };
  const align = gpu.limits.align;
  for (let c = 0; c < chunks; c++) {
    const p0 = ix.chunkPieces[c], np = ix.chunkPieces[c + 1] - p0;
    if (np === 0) continue;
    const row0 = c * chunkRows, rows = Math.min(chunkRows, inDim - row0);
    const pos0 = ix.offsets[c * n], pos1 = ix.offsets[(c + 1) * n];
    const base = Math.floor((pos0 * 4) / align) * align / 4;
    const [gx, gy] = grid(Math.ceil((np * d) / WG), gpu.limits.maxWorkgroups);
    gpu.dispatch(pieces, [
      new Uint32Array([np, p0, d, base, colStride, tail, gi.slotBase, 0, gx * WG]),
      ixBinding,
      partial,
      src(row0, rows),
      { buffer: gi.items, offset: base * 4, size: (pos1 - base) * 4 },
    ], [gx, gy]);
  }
  const reduce = gpu.pipeline("codebook_grad", gradCode, "segment_reduce");
  const outOff = out.offset ?? 0;
  for (const ch of rowChunks(n, d * 4, gpu.limits.maxBinding, align)) {
    const [gx, gy] = grid(Math.ceil((ch.rows * d) / WG), gpu.limits.maxWorkgroups);
    const target = { buffer: out.buffer, offset: outOff + ch.row0 * d * 4, size: ch.rows * d * 4 };
    if (target.offset % align !== 0) {
      throw new Error(`${kernel}: output row ${ch.row0} lands at unaligned byte ${target.offset}`);
    }
    gpu.dispatch(reduce, [
      new Uint32Array([ch.rows, ch.row0, d, 0, 0, 0, gi.slotBase, +accumulate, gx * WG]),
      ixBinding,
      partial,
      target,
    ], [gx, gy]);
  }
}

/**
 * The binding of rows [row0, row0 + rows) of W^T [inDim, out] (the `wT` range), checked to be
 * bindable in the index's row chunks.
 */
function rowChunkSource(gpu: Gpu, kernel: string, wT: BufferRange, ix: CodeIndex): SourceChunk {
  const { inDim, out, chunkRows } = ix;
  const off = wT.offset ?? 0;
  const rowBytes = out * 4;
  if (chunkRows < inDim) {
    if ((chunkRows * rowBytes) % gpu.limits.align !== 0 || off % gpu.limits.align !== 0) {
      throw new Error(
        `${kernel}: chunks of ${chunkRows} rows of ${rowBytes} bytes are not ` +
          `${gpu.limits.align}-byte aligned; build the index with codeChunkRows`,
      );
    }
  }
  if (Math.min(chunkRows, inDim) * rowBytes > gpu.limits.maxBinding) {
    throw new Error(
      `${kernel}: chunks of ${chunkRows} rows of ${rowBytes} bytes exceed the ` +
        `${gpu.limits.maxBinding}-byte binding limit; build the index with codeChunkRows`,
    );
  }
  return (row0: number, rows: number) => ({
    buffer: wT.buffer,
    offset: off + row0 * rowBytes,
    size: rows * rowBytes,
  });
}

/**
 * dC[k, j] (+)= sum over the vectors v = r * cols + cv whose code is k of dwT[r, cv * d + j]
 * (components past out skipped) for dwT [inDim, out] (the gradient of W^T) and dC [n, d].
 * Deterministic: a fixed summation order, no atomics. dwT is bound in the index's row chunks.
 */
export function codebookGrad(
  gpu: Gpu,
  dwT: BufferRange,
  gi: GpuCodeIndex,
  dC: BufferRange,
  opts: { accumulate?: boolean } = {},
): void {
  const { n, d, inDim, out, layout } = gi.index;
  if (layout !== "rows") throw new Error("codebookGrad: the index is not a codebook index");
  fits("codebookGrad", "dwT", dwT, inDim * out);
  fits("codebookGrad", "dC", dC, n * d);
  const chunk = rowChunkSource(gpu, "codebookGrad", dwT, gi.index);
  segmentSum(gpu, gi, chunk, dC, opts.accumulate ?? false, "codebookGrad");
}

/**
 * W^T [inDim, out] decoded from the code index (wT[r, c] = centroids[code of vector
 * (r, floor(c / d)), c % d] for c < out, nothing written past out), read from the code
 * index `gi` (built over the same codes with the device's chunking, see prepareCodeIndex):
 * every piece writes its codebook entry at its items' positions, each element of W^T exactly
 * once. centroids [n, d] f32 (n = the index's keys). W^T is bound in the index's row chunks.
 */
export function decodeFromIndex(
  gpu: Gpu,
  centroids: BufferRange,
  gi: GpuCodeIndex,
  wT: BufferRange,
  inDim: number,
  out: number,
  d: number,
): void {
  const ix = gi.index;
  if (ix.layout !== "rows") throw new Error("decodeFromIndex: the index is not a codebook index");
  if (ix.inDim !== inDim || ix.out !== out || ix.d !== d) {
    throw new Error(
      `decodeFromIndex: the index is of [${ix.inDim}, ${ix.out}] with d = ${ix.d}, ` +
        `not [${inDim}, ${out}] with d = ${d}`,
    );
  }
  const { n, cols, chunkRows } = ix;
  fits("decodeFromIndex", "wT", wT, inDim * out);
  fits("decodeFromIndex", "centroids", centroids, n * d);
  const chunk = rowChunkSource(gpu, "decodeFromIndex", wT, ix);
  const tail = out - (cols - 1) * d;
  const chunks = ix.chunkPieces.length - 1;
  const pipe = gpu.pipeline("codebook_decode_index", decodeIndexCode, "decode_pieces");
  const ixBinding = { buffer: gi.ix, offset: 0, size: (gi.slotBase + n + 1) * 4 };
  const align = gpu.limits.align;
  for (let c = 0; c < chunks; c++) {
    const p0 = ix.chunkPieces[c], np = ix.chunkPieces[c + 1] - p0;
    if (np === 0) continue;
    const row0 = c * chunkRows, rows = Math.min(chunkRows, inDim - row0);
    const pos0 = ix.offsets[c * n], pos1 = ix.offsets[(c + 1) * n];
    const base = Math.floor((pos0 * 4) / align) * align / 4;
    const [gx, gy] = grid(Math.ceil((np * d) / WG), gpu.limits.maxWorkgroups);
    gpu.dispatch(pipe, [
      new Uint32Array([np, p0, d, base, tail, gi.slotBase, n, gx * WG]),
      ixBinding,
      centroids,
      chunk(row0, rows),
      { buffer: gi.items, offset: base * 4, size: (pos1 - base) * 4 },
    ], [gx, gy]);
  }
}
