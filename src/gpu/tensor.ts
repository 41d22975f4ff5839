// A GPU tensor: shape, dtype and one GPUBuffer, with upload, readback and row chunking for
// bindings past maxStorageBufferBindingSize.
import type { BufferRange, Gpu } from "./device.ts";

export type TensorDtype = "f32" | "u32" | "i32";

export class Tensor {
  private released = false;
  constructor(
    readonly gpu: Gpu,
    readonly shape: number[],
    readonly buffer: GPUBuffer,
    readonly dtype: TensorDtype = "f32",
  ) {}

  static empty(gpu: Gpu, shape: number[], label: string, dtype: TensorDtype = "f32"): Tensor {
    const n = shape.reduce((a, b) => a * b, 1);
    return new Tensor(gpu, shape, gpu.createBuffer(n * 4, label), dtype);
  }

  static async from(
    gpu: Gpu,
    data: Float32Array | Uint32Array | Int32Array,
    shape: number[],
    label: string,
  ): Promise<Tensor> {
    const n = shape.reduce((a, b) => a * b, 1);
    if (n !== data.length) {
      throw new Error(`${label}: ${data.length} values do not fill shape [${shape}]`);
    }
    const dtype: TensorDtype = data instanceof Float32Array
      ? "f32"
      : data instanceof Uint32Array
      ? "u32"
      : "i32";
    const t = new Tensor(gpu, shape, gpu.createBuffer(n * 4, label), dtype);
    await gpu.write(t.buffer, data);
    return t;
  }

  get size(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  get bytes(): number {
    return this.size * 4;
  }

  /** Bytes of one index along dim 0. */
  get rowBytes(): number {
    return this.bytes / this.shape[0];
  }

  /** The whole buffer as a binding (must fit maxBinding). */
  get all(): BufferRange {
    if (this.bytes > this.gpu.limits.maxBinding) {
      throw new Error(
        `${this.buffer.label}: ${this.bytes} bytes exceed the ${this.gpu.limits.maxBinding}-byte ` +
          `binding limit; bind it in row chunks`,
      );
    }
    return { buffer: this.buffer, offset: 0, size: this.bytes };
  }

  /** Rows [row0, row0 + rows) along dim 0 as a binding. */
  rows(row0: number, rows: number): BufferRange {
    const rb = this.rowBytes;
    return { buffer: this.buffer, offset: row0 * rb, size: rows * rb };
  }

  async toF32(): Promise<Float32Array> {
    return new Float32Array(await this.gpu.read(this.buffer, 0, this.bytes));
  }

  async toU32(): Promise<Uint32Array> {
    return new Uint32Array(await this.gpu.read(this.buffer, 0, this.bytes));
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    this.gpu.releaseBuffer(this.buffer);
  }
}

/**
 * Splits `rows` rows of `rowBytes` each into chunks whose bytes stay within `maxBinding` and whose
 * starting byte offsets are multiples of `align`. `multiple` forces chunk sizes to a multiple of
 * that many rows (besides the last).
 */
export function rowChunks(
  rows: number,
  rowBytes: number,
  maxBinding: number,
  align: number,
  multiple = 1,
): { row0: number; rows: number }[] {
  if (rows * rowBytes <= maxBinding) return [{ row0: 0, rows }];
  // Smallest row step whose byte size is a multiple of align.
  let step = 1;
  while ((step * rowBytes) % align !== 0) step++;
  step = lcm(step, multiple);
  const per = Math.floor(maxBinding / rowBytes / step) * step;
  if (per <= 0) {
    throw new Error(`one chunk of ${step} rows (${step * rowBytes} bytes) exceeds ${maxBinding}`);
  }
  const out: { row0: number; rows: number }[] = [];
  for (let r = 0; r < rows; r += per) out.push({ row0: r, rows: Math.min(per, rows - r) });
  return out;
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

function lcm(a: number, b: number): number {
  return (a / gcd(a, b)) * b;
}
