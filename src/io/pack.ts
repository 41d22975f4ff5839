// Codes packed at their bit width. The codes of one matrix, [in, ceil(out / d)] row-major, form
// one little-endian bit stream: code k occupies bits [k * b, (k + 1) * b), bit 0 of byte 0 first,
// so that read as little-endian u32 words, code k starts at bit (k * b) % 32 of word
// floor(k * b / 32) and may continue into the next word. b = codeBits(n) = max(1, ceil(log2 n)).

/** The shape of one ClusComp linear: W^T [in, out] in d-vectors, splits codebooks of n entries. */
export interface CodebookShape {
  /** Input features (rows of W^T). */
  in: number;
  /** Output features (columns of W^T). */
  out: number;
  d: number;
  /** Entries per codebook. */
  n: number;
  /** Codebooks along the input rows: rows [s * in / splits, (s + 1) * in / splits) use codebook s. */
  splits: number;
  /** Bits per code: codeBits(n). */
  bits: number;
}

/** Bits per code for a codebook of n entries: 1 for n <= 2, 16 for n <= 65,536. */
export function codeBits(n: number): number {
  if (!(Number.isInteger(n) && n >= 1 && n <= 65536)) {
    throw new RangeError(`codeBits: codebook size ${n} is outside [1, 65536]`);
  }
  return Math.max(1, Math.ceil(Math.log2(n)));
}

/** Bytes of `count` codes packed at `bits` bits. */
export function packedBytes(count: number, bits: number): number {
  return Math.ceil((count * bits) / 8);
}

/** u32 words the GPU holds for `count` codes at `bits` bits (at least one). */
export function packedWords(count: number, bits: number): number {
  return Math.max(1, Math.ceil((count * bits) / 32));
}

/**
 * Packs codes (each < 2^bits) into u32 words, padded with zero bits. The words' little-endian
 * bytes are the on-disk stream (take the first packedBytes of them).
 */
export function packCodes(codes: ArrayLike<number>, bits: number): Uint32Array {
  checkBits(bits);
  const words = new Uint32Array(packedWords(codes.length, bits));
  const limit = 2 ** bits;
  for (let k = 0; k < codes.length; k++) {
    const c = codes[k];
    if (!(c >= 0 && c < limit && Number.isInteger(c))) {
      throw new RangeError(`packCodes: code ${c} at index ${k} does not fit ${bits} bits`);
    }
    const bit = k * bits, w = Math.floor(bit / 32), s = bit % 32;
    words[w] |= c << s;
    if (s + bits > 32) words[w + 1] |= c >>> (32 - s);
  }
  return words;
}

/** Unpacks `count` codes of `bits` bits from u32 words. */
export function unpackCodes(words: Uint32Array, count: number, bits: number): Uint32Array {
  checkBits(bits);
  if (words.length * 32 < count * bits) {
    throw new RangeError(
      `unpackCodes: ${words.length} words hold fewer than ${count} codes of ${bits} bits`,
    );
  }
  const out = new Uint32Array(count);
  const mask = bits === 32 ? 0xffffffff : (2 ** bits) - 1;
  for (let k = 0; k < count; k++) {
    const bit = k * bits, w = Math.floor(bit / 32), s = bit % 32;
    let v = words[w] >>> s;
    if (s + bits > 32) v |= words[w + 1] << (32 - s);
    out[k] = (v & mask) >>> 0;
  }
  return out;
}

/** The on-disk bytes (little-endian stream, packedBytes long) of packed words. */
export function wordsToBytes(words: Uint32Array, count: number, bits: number): Uint8Array {
  const bytes = new Uint8Array(words.length * 4);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < words.length; i++) view.setUint32(i * 4, words[i], true);
  return bytes.subarray(0, packedBytes(count, bits));
}

/** u32 words (zero-padded) from on-disk stream bytes. */
export function bytesToWords(bytes: Uint8Array, count: number, bits: number): Uint32Array {
  const words = new Uint32Array(packedWords(count, bits));
  const padded = new Uint8Array(words.length * 4);
  padded.set(bytes.subarray(0, Math.min(bytes.length, padded.length)));
  const view = new DataView(padded.buffer);
  for (let i = 0; i < words.length; i++) words[i] = view.getUint32(i * 4, true);
  return words;
}

function checkBits(bits: number): void {
  if (!(Number.isInteger(bits) && bits >= 1 && bits <= 16)) {
    throw new RangeError(`code width ${bits} bits is outside [1, 16]`);
  }
}

/**
 * Index of the first of `count` packed codes that is >= n, or -1 when every code is < n. One
 * pass over the stream, nothing allocated; n >= 2^bits needs no pass at all.
 */
export function firstCodeAtLeast(
  words: Uint32Array,
  count: number,
  bits: number,
  n: number,
): number {
  checkBits(bits);
  if (n >= 2 ** bits) return -1;
  if (words.length * 32 < count * bits) {
    throw new RangeError(
      `firstCodeAtLeast: ${words.length} words hold fewer than ${count} codes of ${bits} bits`,
    );
  }
  const mask = (2 ** bits) - 1;
  for (let k = 0; k < count; k++) {
    const bit = k * bits, w = Math.floor(bit / 32), s = bit % 32;
    let v = words[w] >>> s;
    if (s + bits > 32) v |= words[w + 1] << (32 - s);
    if (((v & mask) >>> 0) >= n) return k;
  }
  return -1;
}

/**
 * GPU bytes of one ClusComp linear held as packed codes (u32 words, at least 16 bytes: the
 * runtime's smallest buffer) plus its f32 centroids [splits * n, d].
 */
export function codebookGpuBytes(
  inDim: number,
  out: number,
  d: number,
  n: number,
  splits: number,
): number {
  const count = inDim * Math.ceil(out / d);
  const codes = Math.max(16, packedWords(count, codeBits(n)) * 4);
  return codes + Math.max(16, splits * n * d * 4);
}
