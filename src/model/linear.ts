// A linear layer on the GPU in either form: a dense W^T [in, out] tensor, or a ClusComp codebook
// with packed codes (never expanded). One call, linear(), applies either to feature-major
// activations, writing feature-major or token-major outputs.
import type { Gpu } from "../gpu/device.ts";
import { Tensor } from "../gpu/tensor.ts";
import type { LinearKind, ModelConfig } from "../io/config.ts";
import { type CodebookLayer, codebookLinear, type LinearIO } from "../kernels/codebook_linear.ts";
import { matmul } from "../kernels/matmul.ts";
import { denseMatvec, MATVEC_MAX_N } from "../kernels/matvec.ts";
import { hostMeter } from "../util/hostmeter.ts";
import { linearOf, type WeightSource } from "./weights.ts";

export type { LinearIO } from "../kernels/codebook_linear.ts";

/** Dense W^T [in, out] as a Tensor, or a codebook layer. */
export type GpuLinear = Tensor | CodebookLayer;

export function isCodebook(w: GpuLinear): w is CodebookLayer {
  return !(w instanceof Tensor);
}

/** Uploads one linear of one block in the form the source holds it. */
export async function uploadLinear(
  gpu: Gpu,
  cfg: ModelConfig,
  src: WeightSource,
  layer: number,
  kind: LinearKind,
): Promise<GpuLinear> {
  const lin = linearOf(cfg, layer, kind);
  const cb = await src.codebook?.(layer, kind);
  if (!cb) {
    const wT = await src.linearT(layer, kind);
    return await hostMeter.during(
      wT.byteLength,
      () => Tensor.from(gpu, wT, [lin.in, lin.out], `L${layer}.${kind}`),
    );
  }
  const centroids = gpu.createBuffer(cb.centroids.byteLength, `L${layer}.${kind}.codebook`);
  const codes = gpu.createBuffer(cb.codes.byteLength, `L${layer}.${kind}.codes`);
  await gpu.write(centroids, cb.centroids);
  await gpu.write(codes, cb.codes);
  return { ...cb, centroids, codes };
}

/** GPU bytes a linear holds. */
export function linearBytes(w: GpuLinear): number {
  return isCodebook(w) ? w.centroids.size + w.codes.size : w.buffer.size;
}

export function releaseLinear(gpu: Gpu, w: GpuLinear): void {
  if (isCodebook(w)) {
    gpu.releaseBuffer(w.centroids);
    gpu.releaseBuffer(w.codes);
  } else {
    w.release();
  }
}

/**
 * y (+)= x W for N tokens (see LinearIO for the layouts). Dense layers take the matvec kernel
 * for a few tokens and the matmul otherwise; codebook layers pick their form by shape.
 */
export function linear(gpu: Gpu, w: GpuLinear, inDim: number, out: number, io: LinearIO): void {
  if (isCodebook(w)) {
    if (w.in !== inDim || w.out !== out) {
      throw new Error(
        `linear: codebook layer is [${w.in}, ${w.out}], called as [${inDim}, ${out}]`,
      );
    }
    codebookLinear(gpu, w, io);
    return;
  }
  if (io.N <= MATVEC_MAX_N) {
    denseMatvec(gpu, w.buffer, inDim, out, io);
    return;
  }
  const xOff = io.xOffset ?? 0, yOff = io.yOffset ?? 0;
  if (io.yCol === 1) {
    // y^T [out, N] = (W^T)^T x^T
    matmul(gpu, {
      M: out,
      N: io.N,
      K: inDim,
      a: w.buffer,
      lda: out,
      b: io.x,
      bOffset: xOff,
      ldb: io.ldx,
      c: io.y,
      cOffset: yOff,
      ldc: io.yRow,
      accumulate: io.accumulate,
    });
  } else if (io.yRow === 1) {
    // y [N, out] = x W^T, x^T read as At
    matmul(gpu, {
      M: io.N,
      N: out,
      K: inDim,
      a: io.x,
      aOffset: xOff,
      lda: io.ldx,
      b: w.buffer,
      ldb: out,
      c: io.y,
      cOffset: yOff,
      ldc: io.yCol,
      accumulate: io.accumulate,
    });
  } else {
    throw new Error(`linear: output strides (${io.yRow}, ${io.yCol}) are neither layout`);
  }
}
