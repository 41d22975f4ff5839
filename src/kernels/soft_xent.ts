// Softmax cross-entropy against soft targets for distillation (shaders/soft_xent.wgsl): per row
// of token-major logits, the loss and (in place) its gradient for the target mixture
// q = (1 - w) onehot(target) + w * teacher top-k probabilities (renormalized over the k given).
import code from "../../shaders/soft_xent.wgsl" with { type: "text" };
import { type BufferRange, f32bits, fits, type Gpu, grid } from "../gpu/device.ts";
import { XENT_MAX_V } from "./backward.ts";

/** Most teacher entries per row (two k-long loops per invocation stay far below Mesa's limit). */
export const SOFT_XENT_MAX_K = 1000;

export interface SoftXentArgs {
  /** [T, V] token-major logits, overwritten with scale * (softmax - q). */
  logits: BufferRange;
  /** [t0 + T] u32 hard targets; NO_TARGET rows get zero gradient and zero loss. */
  targets: BufferRange;
  /** [(t0 + T) * k] u32 teacher ids and f32 probabilities (any 16-byte buffer when k = 0). */
  teacherIds: BufferRange;
  teacherProbs: BufferRange;
  /** [t0 + T] f32: the row losses -sum_j q_j log softmax(z)_j. */
  loss: BufferRange;
  T: number;
  V: number;
  /** Teacher entries per row, 0 for none (q = onehot). A row whose k probs sum to <= 0 is hard. */
  k: number;
  /** Weight w of the teacher distribution in q. */
  weight: number;
  scale: number;
  /** Row of targets/teacher/loss that logits row 0 belongs to (row-chunked logits). */
  t0?: number;
}

/** Loss and in-place gradient of the soft-target cross-entropy; see SoftXentArgs. */
export function softXent(gpu: Gpu, a: SoftXentArgs): void {
  const { T, V, k } = a;
  const t0 = a.t0 ?? 0;
  if (!(V >= 1 && V <= XENT_MAX_V)) {
    throw new Error(`softXent: V = ${V} is outside [1, ${XENT_MAX_V}]`);
  }
  if (!(Number.isInteger(k) && k >= 0 && k <= SOFT_XENT_MAX_K)) {
    throw new Error(`softXent: k = ${k} is outside [0, ${SOFT_XENT_MAX_K}]`);
  }
  fits("softXent", "logits", a.logits, T * V);
  fits("softXent", "targets", a.targets, t0 + T);
  fits("softXent", "loss", a.loss, t0 + T);
  if (k > 0) {
    fits("softXent", "teacherIds", a.teacherIds, (t0 + T) * k);
    fits("softXent", "teacherProbs", a.teacherProbs, (t0 + T) * k);
  }
  const [gx, gy] = grid(T, gpu.limits.maxWorkgroups);
  gpu.dispatch(gpu.pipeline("soft_xent", code, "soft_xent"), [
    new Uint32Array([T, V, k, t0, gx, f32bits(a.scale), f32bits(a.weight), 0]),
    a.targets,
    a.teacherIds,
    a.teacherProbs,
    a.logits,
    a.loss,
  ], [gx, gy]);
}
