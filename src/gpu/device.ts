// The one place that talks to navigator.gpu: adapter, device with the adapter's limits,
// pipeline cache, batched dispatch, upload/readback, error reporting and a byte counter.
import { UserError } from "../errors.ts";

/** A storage binding: a whole buffer or a byte range of one. */
export interface BufferRange {
  buffer: GPUBuffer;
  offset?: number;
  size?: number;
}

/** What a binding slot takes: a storage range, u32 words for a uniform, or null (slot unused). */
export type Binding = BufferRange | Uint32Array | null;

const NO_ADAPTER = "No WebGPU adapter found. Without a GPU, install Mesa's Vulkan driver " +
  "(Debian: apt-get install mesa-vulkan-drivers libvulkan1); with one, install its Vulkan driver.";

/** Limits every kernel plans around. */
export interface GpuLimits {
  maxBinding: number;
  maxBuffer: number;
  align: number;
  maxWorkgroups: number;
  maxWorkgroupStorage: number;
  maxStorageBuffers: number;
}

export class Gpu {
  readonly limits: GpuLimits;
  readonly adapterName: string;
  readonly hasF16: boolean;
  /** Bytes currently held by tensors made through this Gpu, and the peak. */
  bytesLive = 0;
  bytesPeak = 0;
  /** Dispatches recorded so far (for profiling). */
  dispatches = 0;
  /** With CLUSCOMP_PROFILE=2: milliseconds per kernel, each dispatch waited for on its own. */
  readonly kernelMs = new Map<string, { ms: number; count: number }>();
  private pipelines = new Map<string, GPUComputePipeline>();
  private modules = new Map<string, GPUShaderModule>();
  private encoder: GPUCommandEncoder | null = null;
  private pending: GPUBuffer[] = [];
  private batchKernels = new Set<string>();
  private lostReason: string | null = null;
  private uncaptured: string[] = [];
  private query: GPUQuerySet | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private pools: UniformPool[] = [];
  private freePools: UniformPool[] = [];
  private queryLabels: string[] = [];

  constructor(readonly device: GPUDevice, info: GPUAdapterInfo) {
    const l = device.limits;
    this.limits = {
      maxBinding: l.maxStorageBufferBindingSize,
      maxBuffer: l.maxBufferSize,
      align: l.minStorageBufferOffsetAlignment,
      maxWorkgroups: l.maxComputeWorkgroupsPerDimension,
      maxWorkgroupStorage: l.maxComputeWorkgroupStorageSize,
      maxStorageBuffers: l.maxStorageBuffersPerShaderStage,
    };
    this.adapterName = info.description || info.vendor || "unknown adapter";
    this.hasF16 = device.features.has("shader-f16");
    device.lost.then((e) => {
      this.lostReason = `${e.reason}: ${e.message}`;
    });
    // Shader compilation and pipeline errors arrive here (they happen outside any scope).
    device.addEventListener("uncapturederror", (e) => {
      this.uncaptured.push((e as GPUUncapturedErrorEvent).error.message.split("\n")[0]);
    });
  }

  /** A compute pipeline, cached by shader name, entry point and override constants. */
  pipeline(
    name: string,
    code: string,
    entry: string,
    constants: Record<string, number> = {},
  ): GPUComputePipeline {
    const keys = Object.keys(constants).sort();
    const key = `${name}:${entry}:${keys.map((k) => `${k}=${constants[k]}`).join(",")}`;
    let p = this.pipelines.get(key);
    if (!p) {
      let module = this.modules.get(name);
      if (!module) {
        module = this.device.createShaderModule({ label: name, code });
        this.modules.set(name, module);
      }
      const t0 = performance.now();
      p = this.device.createComputePipeline({
        label: `${name}.${entry}`,
        layout: "auto",
        compute: { module, entryPoint: entry, constants },
      });
      this.pipelines.set(key, p);
      if (PROFILE) console.error(`pipeline ${key}: ${(performance.now() - t0).toFixed(0)} ms`);
    }
    return p;
  }

  /**
   * Records one dispatch. Bindings go to @group(0) @binding(i) in order; a Uint32Array becomes a
   * uniform buffer. Work is submitted on flush() or readback.
   */
  dispatch(
    pipeline: GPUComputePipeline,
    bindings: Binding[],
    workgroups: [number, number?, number?],
  ): void {
    this.checkLost();
    const [x, y = 1, z = 1] = workgroups;
    if (x === 0 || y === 0 || z === 0) return;
    const max = this.limits.maxWorkgroups;
    if (x > max || y > max || z > max) {
      throw new Error(`${pipeline.label}: dispatch ${x}x${y}x${z} exceeds ${max} workgroups`);
    }
    const encoder = this.begin(pipeline.label, true);
    this.dispatches++;
    const entries: GPUBindGroupEntry[] = [];
    bindings.forEach((b, i) => {
      if (b === null) return;
      if (b instanceof Uint32Array) {
        entries.push({ binding: i, resource: this.uniform(b) });
      } else {
        entries.push({
          binding: i,
          resource: { buffer: b.buffer, offset: b.offset ?? 0, size: b.size },
        });
      }
    });
    const group = this.device.createBindGroup({
      label: pipeline.label,
      layout: pipeline.getBindGroupLayout(0),
      entries,
    });
    // Consecutive dispatches share one compute pass (WebGPU orders their storage accesses);
    // profiling gives each its own pass for the timestamps.
    const ts = this.timestamps(pipeline.label);
    if (ts) this.endPass();
    this.pass ??= encoder.beginComputePass({ timestampWrites: ts });
    this.pass.setPipeline(pipeline);
    this.pass.setBindGroup(0, group);
    this.pass.dispatchWorkgroups(x, y, z);
    if (ts) this.endPass();
  }

  /** A uniform binding holding `words`, carved from a pooled buffer written at submit. */
  private uniform(words: Uint32Array): GPUBufferBinding {
    const size = Math.max(16, Math.ceil(words.byteLength / 16) * 16);
    const align = this.device.limits.minUniformBufferOffsetAlignment;
    let pool = this.pools[this.pools.length - 1];
    if (!pool || pool.used + size > POOL_BYTES) {
      pool = this.freePools.pop() ?? {
        buffer: this.device.createBuffer({
          size: POOL_BYTES,
          usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
        }),
        data: new Uint8Array(POOL_BYTES),
        used: 0,
      };
      this.pools.push(pool);
    }
    const offset = pool.used;
    pool.data.set(new Uint8Array(words.buffer, words.byteOffset, words.byteLength), offset);
    pool.used = Math.ceil((offset + size) / align) * align;
    return { buffer: pool.buffer, offset, size };
  }

  private endPass(): void {
    this.pass?.end();
    this.pass = null;
  }

  /** Submits recorded work and reports validation or memory errors with the kernels' names. */
  async flush(): Promise<void> {
    if (!this.encoder) return;
    this.endPass();
    for (const pool of this.pools) {
      this.device.queue.writeBuffer(pool.buffer, 0, pool.data, 0, pool.used);
      pool.used = 0;
    }
    this.freePools.push(...this.pools);
    this.pools = [];
    this.device.queue.submit([this.encoder.finish()]);
    this.encoder = null;
    const kernels = [...this.batchKernels].join(", ");
    this.batchKernels.clear();
    const validation = await this.device.popErrorScope();
    const oom = await this.device.popErrorScope();
    for (const b of this.pending) b.destroy();
    this.pending = [];
    if (this.query && this.queryLabels.length > 0) await this.readTimestamps();
    const err = validation ?? oom;
    if (err) {
      const cause = this.uncaptured.splice(0).join("; ");
      throw new Error(
        `GPU error in kernels [${kernels}]: ${err.message}${cause ? ` (${cause})` : ""}`,
      );
    }
    this.checkLost();
  }

  /** Waits until the GPU has finished all submitted work. */
  async sync(): Promise<void> {
    await this.flush();
    await this.device.queue.onSubmittedWorkDone();
    this.checkLost();
  }

  createBuffer(size: number, label: string): GPUBuffer {
    this.checkLost();
    if (size > this.limits.maxBuffer) {
      throw new Error(
        `${label}: ${size} bytes exceeds the device's maxBufferSize ${this.limits.maxBuffer}`,
      );
    }
    const buf = this.device.createBuffer({
      label,
      size: Math.max(16, Math.ceil(size / 4) * 4),
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    this.bytesLive += buf.size;
    this.bytesPeak = Math.max(this.bytesPeak, this.bytesLive);
    return buf;
  }

  /** Frees a buffer; when recorded work may still use it, after that work is submitted. */
  releaseBuffer(buf: GPUBuffer): void {
    this.bytesLive -= buf.size;
    if (this.encoder) this.pending.push(buf);
    else buf.destroy();
  }

  /** Zeroes a byte range, recorded in order with dispatches. */
  clear(buf: GPUBuffer, offset = 0, size?: number): void {
    this.begin("clear").clearBuffer(buf, offset, size);
  }

  /** Writes host data into a buffer at a byte offset (after any recorded work). */
  async write(buf: GPUBuffer, data: ArrayBufferView, offset = 0): Promise<void> {
    await this.flush();
    const bytes = new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
    // writeBuffer needs a multiple of 4 bytes.
    if (bytes.byteLength % 4 !== 0) {
      const padded = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
      padded.set(bytes);
      this.device.queue.writeBuffer(buf, offset, padded);
    } else {
      this.device.queue.writeBuffer(buf, offset, bytes);
    }
  }

  /** Copies `size` bytes at `offset` back to the host. */
  async read(buf: GPUBuffer, offset = 0, size = buf.size - offset): Promise<ArrayBuffer> {
    const padded = Math.ceil(size / 4) * 4;
    const staging = this.device.createBuffer({
      size: padded,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    this.begin("readback").copyBufferToBuffer(buf, offset, staging, 0, padded);
    await this.flush();
    await staging.mapAsync(GPUMapMode.READ);
    const out = staging.getMappedRange().slice(0, size);
    staging.unmap();
    staging.destroy();
    this.checkLost();
    return out;
  }

  /** Copies between buffers, recorded in order with dispatches. */
  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, size: number): void {
    this.begin("copy").copyBufferToBuffer(src, srcOffset, dst, dstOffset, size);
  }

  /** Timestamp writes for one pass, when kernel profiling is on (CLUSCOMP_PROFILE=2). */
  private timestamps(label: string): GPUComputePassTimestampWrites | undefined {
    if (!PROFILE_KERNELS || !this.device.features.has("timestamp-query")) return undefined;
    this.query ??= this.device.createQuerySet({ type: "timestamp", count: 2 * QUERIES });
    if (this.queryLabels.length === QUERIES) return undefined;
    const i = this.queryLabels.push(label) - 1;
    return {
      querySet: this.query,
      beginningOfPassWriteIndex: 2 * i,
      endOfPassWriteIndex: 2 * i + 1,
    };
  }

  private async readTimestamps(): Promise<void> {
    const n = this.queryLabels.length * 2;
    const resolve = this.device.createBuffer({
      size: n * 8,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    const staging = this.device.createBuffer({
      size: n * 8,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    const enc = this.device.createCommandEncoder();
    enc.resolveQuerySet(this.query!, 0, n, resolve, 0);
    enc.copyBufferToBuffer(resolve, 0, staging, 0, n * 8);
    this.device.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const t = new BigUint64Array(staging.getMappedRange());
    this.queryLabels.forEach((label, i) => {
      const e = this.kernelMs.get(label) ?? { ms: 0, count: 0 };
      e.ms += Number(t[2 * i + 1] - t[2 * i]) / 1e6;
      e.count++;
      this.kernelMs.set(label, e);
    });
    staging.unmap();
    staging.destroy();
    resolve.destroy();
    this.queryLabels = [];
  }

  /** The open command encoder (one is opened, inside error scopes, when none is). */
  private begin(kernel: string, compute = false): GPUCommandEncoder {
    if (!compute) this.endPass();
    if (!this.encoder) {
      this.device.pushErrorScope("out-of-memory");
      this.device.pushErrorScope("validation");
      this.encoder = this.device.createCommandEncoder();
    }
    this.batchKernels.add(kernel);
    return this.encoder;
  }

  private checkLost(): void {
    if (this.lostReason) throw new Error(`GPU device lost (${this.lostReason})`);
  }
}

// Deno only: a browser page has no environment (and no profiling).
const PROFILE_ENV = typeof Deno === "undefined" ? undefined : Deno.env.get("CLUSCOMP_PROFILE");
const PROFILE = PROFILE_ENV === "1";
const PROFILE_KERNELS = PROFILE_ENV === "2";
const QUERIES = 2048;
const POOL_BYTES = 1 << 16;

interface UniformPool {
  buffer: GPUBuffer;
  data: Uint8Array<ArrayBuffer>;
  used: number;
}

let current: Promise<Gpu> | null = null;

/** The process-wide Gpu: requested once, with the adapter's own limits. */
export function getGpu(): Promise<Gpu> {
  current ??= requestGpu();
  return current;
}

async function requestGpu(): Promise<Gpu> {
  if (!("gpu" in navigator) || !navigator.gpu) throw new UserError(NO_ADAPTER);
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) throw new UserError(NO_ADAPTER);
  const a = adapter.limits;
  const features: GPUFeatureName[] = [];
  if (adapter.features.has("shader-f16")) features.push("shader-f16");
  if (PROFILE_KERNELS && adapter.features.has("timestamp-query")) features.push("timestamp-query");
  const device = await adapter.requestDevice({
    requiredFeatures: features,
    requiredLimits: {
      maxStorageBufferBindingSize: a.maxStorageBufferBindingSize,
      maxBufferSize: a.maxBufferSize,
      maxStorageBuffersPerShaderStage: a.maxStorageBuffersPerShaderStage,
      maxComputeWorkgroupStorageSize: a.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: a.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: a.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupSizeY: a.maxComputeWorkgroupSizeY,
      maxComputeWorkgroupsPerDimension: a.maxComputeWorkgroupsPerDimension,
    },
  });
  return new Gpu(device, adapter.info);
}

/** u32 bit pattern of an f32, for passing floats in a u32 params array. */
export function f32bits(x: number): number {
  const f = new Float32Array([x]);
  return new Uint32Array(f.buffer)[0];
}

/** Splits n workgroups over x and y so neither exceeds the per-dimension limit. */
export function grid(n: number, max = 65535): [number, number] {
  if (n <= max) return [n, 1];
  const y = Math.ceil(n / max);
  return [Math.ceil(n / y), y];
}

/** Throws unless binding `name` of `kernel` holds at least `floats` 4-byte values. */
export function fits(kernel: string, name: string, r: BufferRange, floats: number): void {
  const have = r.size ?? r.buffer.size - (r.offset ?? 0);
  if (have < floats * 4) {
    throw new Error(`${kernel}: binding ${name} holds ${have} bytes, needs ${floats * 4}`);
  }
}
