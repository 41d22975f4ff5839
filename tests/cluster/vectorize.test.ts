import assert from "node:assert/strict";
import { decodeT, decodeW, vectorize, vectorizeT } from "../../src/cluster/vectorize.ts";
import { randomF32 } from "../util.ts";

function transpose(w: Float32Array, rows: number, cols: number): Float32Array {
  const t = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = w[r * cols + c];
  return t;
}

for (const [out, inDim, d] of [[10, 7, 4], [12, 5, 4], [9, 3, 9], [5, 4, 1], [7, 6, 16]]) {
  Deno.test(`decode(vectorize(W)) reproduces W exactly (out=${out}, in=${inDim}, d=${d})`, () => {
    const w = randomF32(out * inDim, out * 100 + d);
    const { x, N, pad } = vectorize(w, out, inDim, d);
    const cols = Math.ceil(out / d);
    assert.equal(N, inDim * cols);
    assert.equal(pad, cols * d - out);
    assert.equal(x.length, N * d);
    // Every vector is its own centroid.
    const codes = Uint32Array.from({ length: N }, (_, i) => i);
    assert.deepEqual(decodeW(x, codes, inDim, out, d), w);
    assert.deepEqual(decodeT(x, codes, inDim, out, d), transpose(w, out, inDim));
    // Same vectors from W^T.
    assert.deepEqual(vectorizeT(transpose(w, out, inDim), inDim, out, d).x, x);
  });
}

Deno.test("vectorize cuts W^T rows into d consecutive output channels, zero-padded", () => {
  // W [out=5, in=2]: W[o, r] = 10 * o + r.
  const w = Float32Array.from({ length: 10 }, (_, i) => 10 * Math.floor(i / 2) + (i % 2));
  const { x, N, pad } = vectorize(w, 5, 2, 3);
  assert.equal(N, 4);
  assert.equal(pad, 1);
  // Row r of W^T is [W[0, r], ..., W[4, r], 0] cut into two vectors of 3.
  assert.deepEqual(Array.from(x), [0, 10, 20, 30, 40, 0, 1, 11, 21, 31, 41, 0]);
});

Deno.test("decode takes u8 and u16 codes and rejects codes >= n", () => {
  const centroids = new Float32Array([1, 2, 3, 4]); // n = 2, d = 2
  const codes8 = new Uint8Array([1, 0, 0, 1]); // in = 2, out = 3 -> 2 vectors per row
  const wT = decodeT(centroids, codes8, 2, 3, 2);
  assert.deepEqual(Array.from(wT), [3, 4, 1, 1, 2, 3]);
  assert.deepEqual(decodeW(centroids, new Uint16Array(codes8), 2, 3, 2), transpose(wT, 2, 3));
  assert.throws(() => decodeT(centroids, new Uint8Array([2, 0, 0, 0]), 2, 3, 2), /code 2/);
  assert.throws(() => decodeT(centroids, new Uint8Array([0, 0, 0]), 2, 3, 2), /3 codes/);
});
