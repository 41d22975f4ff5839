// Safetensors: strict header parsing, reads by offset, deterministic atomic writes.
import { statSync } from "node:fs";
import { basename, dirname } from "node:path";
import { UserError } from "../errors.ts";
import { tempName } from "./atomic.ts";
import { asSource, type FileSource } from "./source.ts";

export type Dtype = "F32" | "F16" | "BF16" | "U8" | "U16" | "I32" | "U32";

export const DTYPE_SIZE: Record<Dtype, number> = {
  F32: 4,
  F16: 2,
  BF16: 2,
  U8: 1,
  U16: 2,
  I32: 4,
  U32: 4,
};

export interface TensorInfo {
  name: string;
  dtype: Dtype;
  shape: number[];
  file: string;
  /** Absolute byte offset in file. */
  offset: number;
  nbytes: number;
}

const INDEX_FILE = "model.safetensors.index.json";
const MAX_HEADER = 100_000_000; // the reference implementation's limit

function isDtype(s: unknown): s is Dtype {
  return typeof s === "string" && Object.hasOwn(DTYPE_SIZE, s);
}

function isCount(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

function product(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, " ");
}

/** Header of one file, validated. */
function parseHeader(
  file: string,
  bytes: Uint8Array,
  fileSize: number,
): { tensors: TensorInfo[]; metadata: Record<string, string> } {
  const fail = (problem: string): never => {
    throw new UserError(`Cannot read ${file}: ${problem}`);
  };
  const dataStart = 8 + bytes.length;
  const dataSize = fileSize - dataStart;
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    fail(`header is not valid JSON (${oneLine((e as Error).message)})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    fail("header is not a JSON object");
  }
  const metadata: Record<string, string> = {};
  const tensors: TensorInfo[] = [];
  const begins = new Map<string, number>();
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
        fail("__metadata__ is not an object");
      }
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== "string") fail(`__metadata__ value "${k}" is not a string`);
        metadata[k] = v as string;
      }
      continue;
    }
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
      fail(`tensor "${name}" entry is not an object`);
    }
    const { dtype, shape, data_offsets: offs } = raw as Record<string, unknown>;
    if (!isDtype(dtype)) fail(`tensor "${name}" has unsupported dtype ${JSON.stringify(dtype)}`);
    if (!Array.isArray(shape) || !shape.every(isCount)) {
      fail(
        `tensor "${name}" shape ${JSON.stringify(shape)} is not a list of non-negative integers`,
      );
    }
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every(isCount) || offs[0] > offs[1]) {
      fail(`tensor "${name}" data_offsets ${JSON.stringify(offs)} are not [begin, end] integers`);
    }
    const [begin, end] = offs as number[];
    if (end > dataSize) {
      fail(`tensor "${name}" data_offsets end ${end} exceeds data section size ${dataSize}`);
    }
    const dt = dtype as Dtype;
    const sh = shape as number[];
    const want = product(sh) * DTYPE_SIZE[dt];
    if (end - begin !== want) {
      fail(
        `tensor "${name}" has ${end - begin} bytes but shape [${sh}] of ${dt} needs ${want}`,
      );
    }
    begins.set(name, begin);
    tensors.push({
      name,
      dtype: dt,
      shape: sh,
      file,
      offset: dataStart + begin,
      nbytes: end - begin,
    });
  }
  const sorted = tensors.filter((t) => t.nbytes > 0).sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1], cur = sorted[i];
    if (cur.offset < prev.offset + prev.nbytes) {
      fail(`tensors "${prev.name}" and "${cur.name}" have overlapping data_offsets`);
    }
  }
  return { tensors, metadata };
}

/** Reads and validates the header of one safetensors file of a source. */
async function readHeader(src: FileSource, name: string) {
  const file = src.path(name);
  const size = await src.size(name);
  if (size === null) throw new UserError(`Cannot read ${file}: no such file`);
  if (size < 8) throw new UserError(`Cannot read ${file}: file is ${size} bytes, too short`);
  const lenBytes = await src.read(name, 0, 8);
  const len = new DataView(lenBytes.buffer, lenBytes.byteOffset, 8).getBigUint64(0, true);
  if (len + 8n > BigInt(size)) {
    throw new UserError(`Cannot read ${file}: header length ${len} exceeds file size ${size}`);
  }
  if (len > BigInt(MAX_HEADER)) {
    throw new UserError(`Cannot read ${file}: header length ${len} exceeds limit ${MAX_HEADER}`);
  }
  const bytes = await src.read(name, 8, Number(len));
  return parseHeader(file, bytes, size);
}

/** Tensors of a model folder (one file, several files, or sharded with an index). */
export class SafetensorsIndex {
  readonly dir: string;
  /** Files in the order they were read. */
  readonly files: string[];
  private tensors = new Map<string, TensorInfo>();
  private meta: Record<string, string> = {};
  /** File name in the source of each file path. */
  private fileNames = new Map<string, string>();

  private constructor(dir: string, files: string[], private readonly source: FileSource) {
    this.dir = dir;
    this.files = files;
  }

  /** A folder on disk by its path, or any FileSource (an HTTP folder in a browser page). */
  static async open(dir: string | FileSource): Promise<SafetensorsIndex> {
    if (typeof dir === "string") {
      let st;
      try {
        st = statSync(dir);
      } catch {
        throw new UserError(`Cannot read ${dir}: no such directory`);
      }
      if (!st.isDirectory()) throw new UserError(`Cannot read ${dir}: not a directory`);
    }
    const src = asSource(dir);
    const label = src.label;

    const indexPath = src.path(INDEX_FILE);
    let weightMap: Record<string, string> | null = null;
    let names: string[];
    const indexText = await src.text(INDEX_FILE);
    if (indexText !== null) {
      weightMap = readWeightMap(indexPath, indexText);
      names = [...new Set(Object.values(weightMap))].sort();
      for (const n of names) {
        if ((await src.size(n)) === null) {
          throw new UserError(`Cannot read ${indexPath}: shard "${n}" is missing`);
        }
      }
    } else {
      names = (await src.list()).filter((n) => n.endsWith(".safetensors")).sort();
      if (names.length === 0) throw new UserError(`${label}: no *.safetensors files found`);
    }
    const files = names.map((n) => src.path(n));

    const idx = new SafetensorsIndex(label, files, src);
    try {
      for (const [i, name] of names.entries()) {
        const file = files[i];
        idx.fileNames.set(file, name);
        const { tensors, metadata } = await readHeader(src, name);
        Object.assign(idx.meta, metadata);
        for (const t of tensors) {
          const prev = idx.tensors.get(t.name);
          if (prev) {
            throw new UserError(`Cannot read ${file}: tensor "${t.name}" is also in ${prev.file}`);
          }
          idx.tensors.set(t.name, t);
        }
      }
    } finally {
      // Header reads leave no file open: data reads reopen on demand.
      src.close();
    }
    if (weightMap) {
      for (const [name, shard] of Object.entries(weightMap)) {
        const t = idx.tensors.get(name);
        if (!t || basename(t.file) !== basename(shard)) {
          throw new UserError(
            `Cannot read ${indexPath}: tensor "${name}" is not in shard "${shard}"`,
          );
        }
      }
    }
    return idx;
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new UserError(`${this.dir}: tensor "${name}" not found`);
    return t;
  }

  /** Tensor names in file order. */
  names(): string[] {
    return [...this.tensors.keys()];
  }

  metadata(): Record<string, string> {
    return { ...this.meta };
  }

  /** The tensor's bytes, read by offset. */
  readRaw(name: string): Promise<Uint8Array> {
    const t = this.info(name);
    return this.readAt(t.file, t.offset, t.nbytes);
  }

  /** F32, F16 or BF16 tensor as f32 (exact). */
  async readF32(name: string): Promise<Float32Array> {
    const t = this.info(name);
    this.checkFloat(t);
    return bytesToF32(await this.readRaw(name), t.dtype);
  }

  /** Rows [row0, row0 + rows) of a 2-D float tensor as f32. */
  async readRows(name: string, row0: number, rows: number): Promise<Float32Array> {
    const t = this.info(name);
    this.checkFloat(t);
    if (t.shape.length !== 2) {
      throw new UserError(`${t.file}: tensor "${name}" has shape [${t.shape}], not 2-D`);
    }
    const [n, cols] = t.shape;
    if (!isCount(row0) || !isCount(rows) || row0 + rows > n) {
      throw new UserError(
        `${t.file}: rows [${row0}, ${
          row0 + rows
        }) out of range for tensor "${name}" with ${n} rows`,
      );
    }
    const rowBytes = cols * DTYPE_SIZE[t.dtype];
    const bytes = await this.readAt(t.file, t.offset + row0 * rowBytes, rows * rowBytes);
    return bytesToF32(bytes, t.dtype);
  }

  /** Closes cached file handles; later reads reopen them. */
  close(): void {
    this.source.close();
  }

  private checkFloat(t: TensorInfo): void {
    if (t.dtype !== "F32" && t.dtype !== "F16" && t.dtype !== "BF16") {
      throw new UserError(`${t.file}: tensor "${t.name}" has dtype ${t.dtype}, not a float`);
    }
  }

  private readAt(file: string, offset: number, nbytes: number): Promise<Uint8Array> {
    return this.source.read(this.fileNames.get(file)!, offset, nbytes);
  }
}

function readWeightMap(indexPath: string, text: string): Record<string, string> {
  const fail = (problem: string): never => {
    throw new UserError(`Cannot read ${indexPath}: ${problem}`);
  };
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    fail(`not valid JSON (${oneLine((e as Error).message)})`);
  }
  const wm = (json as { weight_map?: unknown } | null)?.weight_map;
  if (typeof wm !== "object" || wm === null || Array.isArray(wm)) fail("no weight_map object");
  for (const [name, file] of Object.entries(wm as Record<string, unknown>)) {
    if (typeof file !== "string" || file === "" || file.includes("/") || file.includes("\\")) {
      fail(`weight_map entry "${name}" is not a file name: ${JSON.stringify(file)}`);
    }
  }
  return wm as Record<string, string>;
}

/** Builds the padded header; entries in the given order (no JS key reordering). */
/** A tensor to write: its bytes whole, or as pieces laid end to end. */
type TensorIn = { name: string; dtype: Dtype; shape: number[]; data: Uint8Array | Uint8Array[] };

const byteLength = (d: Uint8Array | Uint8Array[]) =>
  Array.isArray(d) ? d.reduce((a, p) => a + p.length, 0) : d.length;

function buildHeader(
  path: string,
  tensors: TensorIn[],
  metadata?: Record<string, string>,
): Uint8Array {
  const parts: string[] = [];
  if (metadata) {
    const kv = Object.entries(metadata).map(([k, v]) => {
      if (typeof v !== "string") throw new UserError(`${path}: metadata "${k}" is not a string`);
      return `${JSON.stringify(k)}:${JSON.stringify(v)}`;
    });
    parts.push(`"__metadata__":{${kv.join(",")}}`);
  }
  const seen = new Set<string>();
  let offset = 0;
  for (const t of tensors) {
    if (!t.name || t.name === "__metadata__" || seen.has(t.name)) {
      throw new UserError(`${path}: bad or duplicate tensor name "${t.name}"`);
    }
    seen.add(t.name);
    if (!isDtype(t.dtype)) throw new UserError(`${path}: tensor "${t.name}" dtype ${t.dtype}`);
    if (!t.shape.every(isCount)) {
      throw new UserError(`${path}: tensor "${t.name}" shape [${t.shape}] is invalid`);
    }
    const want = product(t.shape) * DTYPE_SIZE[t.dtype];
    const have = byteLength(t.data);
    if (have !== want) {
      throw new UserError(
        `${path}: tensor "${t.name}" has ${have} bytes, shape [${t.shape}] of ${t.dtype} needs ${want}`,
      );
    }
    const entry = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + want] };
    parts.push(`${JSON.stringify(t.name)}:${JSON.stringify(entry)}`);
    offset += want;
  }
  let json = new TextEncoder().encode(`{${parts.join(",")}}`);
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length) {
    const p = new Uint8Array(padded).fill(0x20);
    p.set(json);
    json = p;
  }
  const out = new Uint8Array(8 + json.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  return out;
}

async function writeAll(f: Deno.FsFile, data: Uint8Array): Promise<void> {
  let done = 0;
  while (done < data.length) done += await f.write(data.subarray(done));
}

/** Writes a safetensors file atomically (temp file, fsync, rename, fsync dir). */
export async function writeSafetensors(
  path: string,
  tensors: { name: string; dtype: Dtype; shape: number[]; data: Uint8Array }[],
  metadata?: Record<string, string>,
): Promise<void> {
  const header = buildHeader(path, tensors, metadata);
  const tmp = tempName(path);
  const f = await Deno.open(tmp, { write: true, createNew: true });
  try {
    try {
      await writeAll(f, header);
      for (const t of tensors) await writeAll(f, t.data);
      f.syncSync();
    } finally {
      f.close();
    }
    await Deno.rename(tmp, path);
  } catch (e) {
    try {
      Deno.removeSync(tmp);
    } catch { /* already gone */ }
    throw e;
  }
  try {
    const d = Deno.openSync(dirname(path), { read: true });
    try {
      d.syncSync();
    } finally {
      d.close();
    }
  } catch { /* directory fsync unsupported here */ }
}

// --- dtype conversion ---

let f16Table: Float32Array | null = null;

/** f32 value of every f16 bit pattern (subnormals, inf and NaN included). */
function f16ToF32Table(): Float32Array {
  if (f16Table) return f16Table;
  const bits = new Uint32Array(65536);
  const vals = new Float32Array(bits.buffer);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exp = (h >>> 10) & 0x1f;
    const mant = h & 0x3ff;
    if (exp === 0x1f) {
      bits[h] = (sign | 0x7f800000 | (mant << 13)) >>> 0;
    } else if (exp === 0) {
      vals[h] = (sign ? -1 : 1) * mant * 2 ** -24;
    } else {
      bits[h] = (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
    }
  }
  f16Table = vals;
  return vals;
}

/** Converts F32, F16 or BF16 bytes (little-endian) to f32. */
export function bytesToF32(bytes: Uint8Array, dtype: Dtype): Float32Array {
  if (dtype === "F32") {
    if (bytes.length % 4) {
      throw new UserError(`F32 data has ${bytes.length} bytes, not a multiple of 4`);
    }
    const copy = new Uint8Array(bytes.length);
    copy.set(bytes);
    return new Float32Array(copy.buffer);
  }
  if (dtype !== "F16" && dtype !== "BF16") {
    throw new UserError(`cannot convert dtype ${dtype} to f32`);
  }
  if (bytes.length % 2) throw new UserError(`${dtype} data has ${bytes.length} bytes, not even`);
  const n = bytes.length / 2;
  const out = new Float32Array(n);
  if (dtype === "BF16") {
    const u = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) u[i] = (bytes[2 * i] | (bytes[2 * i + 1] << 8)) << 16;
  } else {
    const table = f16ToF32Table();
    for (let i = 0; i < n; i++) out[i] = table[bytes[2 * i] | (bytes[2 * i + 1] << 8)];
  }
  return out;
}

/** f32 to bf16 bytes, round to nearest even (NaN stays NaN). */
export function f32ToBf16Bytes(x: Float32Array): Uint8Array {
  const src = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const out = new Uint8Array(x.length * 2);
  for (let i = 0; i < x.length; i++) {
    const b = src[i];
    let h: number;
    if ((b & 0x7f800000) === 0x7f800000 && (b & 0x7fffff) !== 0) h = (b >>> 16) | 0x40;
    else h = ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
    out[2 * i] = h & 0xff;
    out[2 * i + 1] = h >>> 8;
  }
  return out;
}

/** One f32 bit pattern to f16 bits, round to nearest even. */
function f16Bits(b: number): number {
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 112; // f16 biased exponent
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign; // below half the smallest subnormal
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1))) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++; // may carry into inf, as it should
  return sign | h;
}

/** f32 to f16 bytes, round to nearest even (overflow to inf, subnormals kept). */
export function f32ToF16Bytes(x: Float32Array): Uint8Array {
  const src = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const out = new Uint8Array(x.length * 2);
  for (let i = 0; i < x.length; i++) {
    const h = f16Bits(src[i]);
    out[2 * i] = h & 0xff;
    out[2 * i + 1] = h >>> 8;
  }
  return out;
}

/** A whole safetensors file in memory (for small per-block checkpoint units). */
/**
 * A safetensors file in memory. A tensor's data may be given as pieces (e.g. one per window),
 * copied once into the file's bytes without joining them first.
 */
export function encodeSafetensors(
  tensors: TensorIn[],
  metadata?: Record<string, string>,
): Uint8Array {
  const header = buildHeader("(memory)", tensors, metadata);
  const total = header.length + tensors.reduce((a, t) => a + byteLength(t.data), 0);
  const out = new Uint8Array(total);
  out.set(header);
  let off = header.length;
  for (const t of tensors) {
    for (const p of Array.isArray(t.data) ? t.data : [t.data]) {
      out.set(p, off);
      off += p.length;
    }
  }
  return out;
}

/** Parses a safetensors file held in memory; `file` names it in errors. */
export function decodeSafetensors(
  bytes: Uint8Array,
  file: string,
): { name: string; dtype: Dtype; shape: number[]; data: Uint8Array }[] {
  if (bytes.length < 8) throw new UserError(`Cannot read ${file}: shorter than 8 bytes`);
  const len = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  if (len > bytes.length - 8) {
    throw new UserError(
      `Cannot read ${file}: header length ${len} exceeds file size ${bytes.length}`,
    );
  }
  const { tensors } = parseHeader(file, bytes.subarray(8, 8 + len), bytes.length);
  return tensors.map((t) => ({
    name: t.name,
    dtype: t.dtype,
    shape: t.shape,
    data: bytes.slice(t.offset, t.offset + t.nbytes),
  }));
}
