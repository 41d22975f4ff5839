// Dense linear layers for a few tokens (decoding): y (+)= x W with W^T [in, out] (denseMatvec) or
// W [out, in] (rowsMatvec, e.g. a tied LM head over the embedding), feature-major activations and
// either output layout (LinearIO). See shaders/matvec.wgsl.
import code from "../../shaders/matvec.wgsl" with { type: "text" };
import { type BufferRange, fits, type Gpu, grid } from "../gpu/device.ts";
import { rowChunks } from "../gpu/tensor.ts";
import {
  checkIO,
  FEW_TOKENS,
  type LinearIO,
  MAX_ROWS_PER_DISPATCH,
  MIN_GROUPS,
  tokenSlots,
  xQuads,
} from "./codebook_linear.ts";
import { templateModule } from "../gpu/template.ts";

/**
 * Most tokens for which the matvec kernels beat the tiled matmul (src/model/linear.ts routes
 * dense layers by it). Both kernels take any N, cutting it into chunks of this many tokens.
 */
export const MATVEC_MAX_N = FEW_TOKENS;

const ceilDiv = (a: number, b: number) => Math.ceil(a / b);

/**
 * Column quads per invocation of the dense form: wide strips read long runs of each row (32 quads
 * at 4096 x 4096 took 12 ms at N = 1 where 16 took 15.5 and 8 took 23), while leaving at least
 * MIN_GROUPS workgroups.
 */
function denseQuads(quads: number): number {
  return Math.max(1, Math.min(32, Math.floor(quads / (8 * MIN_GROUPS))));
}

/** Rows of W per invocation of the rows form (16: 6.9 ms at N = 1, 17 ms at N = 8, 4096^2). */
function rowsPerLane(rows: number): number {
  return Math.max(1, Math.min(16, Math.floor(rows / (8 * MIN_GROUPS))));
}

function checkDims(kernel: string, inDim: number, out: number): void {
  for (const [k, v] of [["in", inDim], ["out", out]] as const) {
    if (!(Number.isInteger(v) && v >= 1)) {
      throw new Error(`${kernel}: ${k} = ${v} must be a positive integer`);
    }
  }
}

/** The pipeline of entry point `form` for NT = nt, V, R, vec4 W rows (`vec`) and vec4 x (`xv`). */
function pipeline(
  gpu: Gpu,
  form: "dense" | "rows",
  nt: number,
  V: number,
  R: number,
  vec: boolean,
  xv: boolean,
): GPUComputePipeline {
  const m = templateModule("matvec", code, {
    FORM: form === "dense" ? 1 : 2,
    NT: nt,
    V,
    R,
    VEC: vec ? 1 : 0,
    WTY: vec ? "vec4<f32>" : "f32",
    XV: xv ? 1 : 0,
    XTY: xv ? "vec4<f32>" : "f32",
  });
  return gpu.pipeline(m.name, m.code, form);
}

function bindings(p: Uint32Array, w: BufferRange, io: LinearIO) {
  return [p, w, { buffer: io.x }, { buffer: io.y }];
}

/**
 * y (+)= x W for W^T [inDim, out] row-major f32 in `wT` (elements from 0). Meant for N up to
 * MATVEC_MAX_N; larger N runs in chunks of that many tokens. W^T past the binding limit is bound
 * in aligned row chunks; x and y are bound whole.
 */
export function denseMatvec(
  gpu: Gpu,
  wT: GPUBuffer,
  inDim: number,
  out: number,
  io: LinearIO,
): void {
  checkDims("denseMatvec", inDim, out);
  fits("denseMatvec", "W^T", { buffer: wT }, inDim * out);
  const { xOff, yOff } = checkIO(gpu, "denseMatvec", inDim, out, io);
  const vec = out % 4 === 0;
  const chunks = rowChunks(inDim, out * 4, gpu.limits.maxBinding, gpu.limits.align);
  const quads = ceilDiv(out, 4);
  for (let t0 = 0; t0 < io.N; t0 += FEW_TOKENS) {
    const nc = Math.min(FEW_TOKENS, io.N - t0);
    const nt = tokenSlots(nc);
    const V = denseQuads(quads);
    const xv = nt % 4 === 0 && xQuads(io, xOff + t0, inDim, nt);
    const pipe = pipeline(gpu, "dense", nt, V, 1, vec, xv);
    const [gx, gy] = grid(ceilDiv(quads, 8 * V), gpu.limits.maxWorkgroups);
    let first = true;
    for (const ch of chunks) {
      const range = chunks.length === 1
        ? { buffer: wT }
        : { buffer: wT, offset: ch.row0 * out * 4, size: ch.rows * out * 4 };
      for (let r0 = 0; r0 < ch.rows; r0 += MAX_ROWS_PER_DISPATCH) {
        const rows = Math.min(MAX_ROWS_PER_DISPATCH, ch.rows - r0);
        const p = new Uint32Array([
          r0,
          rows,
          out,
          inDim,
          nc,
          io.ldx,
          xOff + ch.row0 * io.ldx + t0,
          yOff + t0 * io.yCol,
          io.yRow,
          io.yCol,
          io.accumulate || !first ? 1 : 0,
          gx,
        ]);
        gpu.dispatch(pipe, bindings(p, range, io), [gx, gy]);
        first = false;
      }
    }
  }
}

/**
 * y (+)= x W^T for W [out, inDim] row-major f32 in `w` (elements from 0): y(m, t) =
 * sum_i w[m, i] x(i, t), e.g. logits from a tied embedding [vocab, hidden]. Meant for N up to
 * MATVEC_MAX_N (larger N runs in chunks of that many tokens). W past the binding limit is bound
 * in aligned row chunks; x and y are bound whole.
 */
export function rowsMatvec(
  gpu: Gpu,
  w: GPUBuffer,
  out: number,
  inDim: number,
  io: LinearIO,
): void {
  checkDims("rowsMatvec", inDim, out);
  fits("rowsMatvec", "W", { buffer: w }, inDim * out);
  const { xOff, yOff } = checkIO(gpu, "rowsMatvec", inDim, out, io);
  const vec = inDim % 4 === 0;
  const chunks = rowChunks(out, inDim * 4, gpu.limits.maxBinding, gpu.limits.align);
  const quads = ceilDiv(inDim, 4);
  for (let t0 = 0; t0 < io.N; t0 += FEW_TOKENS) {
    const nc = Math.min(FEW_TOKENS, io.N - t0);
    const nt = tokenSlots(nc);
    const R = rowsPerLane(Math.min(out, chunks[0].rows));
    const xv = nt === 1 && io.ldx === 1 && xQuads(io, xOff + t0, 1, Math.ceil(inDim / 4) * 4);
    const pipe = pipeline(gpu, "rows", nt, 1, R, vec, xv);
    for (const ch of chunks) {
      const range = chunks.length === 1
        ? { buffer: w }
        : { buffer: w, offset: ch.row0 * inDim * 4, size: ch.rows * inDim * 4 };
      const [gx, gy] = grid(ceilDiv(ch.rows, 8 * R), gpu.limits.maxWorkgroups);
      for (let q0 = 0; q0 < quads; q0 += MAX_ROWS_PER_DISPATCH) {
        const nq = Math.min(MAX_ROWS_PER_DISPATCH, quads - q0);
        const p = new Uint32Array([
          q0 * 4,
          nq,
          ch.rows,
          inDim,
          nc,
          io.ldx,
          xOff + t0,
          yOff + ch.row0 * io.yRow + t0 * io.yCol,
          io.yRow,
          io.yCol,
          io.accumulate || q0 > 0 ? 1 : 0,
          gx,
        ]);
        gpu.dispatch(pipe, bindings(p, range, io), [gx, gy]);
      }
    }
  }
}
