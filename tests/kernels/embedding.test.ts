import { getGpu } from "../../src/gpu/device.ts";
import { rowChunks, Tensor } from "../../src/gpu/tensor.ts";
import { checkIds, embed } from "../../src/kernels/embedding.ts";
import { Rng } from "../../src/util/rng.ts";
import { embedRef } from "../reference/embedding.ts";
import { assertClose, randomF32 } from "../util.ts";

function randomIds(T: number, vocab: number, seed: number): Uint32Array {
  const rng = new Rng(seed);
  const ids = new Uint32Array(T);
  for (let t = 0; t < T; t++) ids[t] = rng.int(vocab);
  return ids;
}

for (const [V, H, T] of [[10, 7, 1], [1000, 70, 333], [3, 5, 2000]]) {
  Deno.test(`embed matches reference (V=${V}, H=${H}, T=${T})`, async () => {
    const gpu = await getGpu();
    const table = randomF32(V * H, V + H), ids = randomIds(T, V, T);
    ids[T - 1] = V - 1;
    const tt = await Tensor.from(gpu, table, [V, H], "table");
    const ti = await Tensor.from(gpu, ids, [T], "ids");
    const to = Tensor.empty(gpu, [H, T], "out");
    embed(gpu, tt.all, ti.all, to.all, V, H, T);
    assertClose(await to.toF32(), embedRef(table, ids, V, H, T), 0, 0, "embed");
    for (const t of [tt, ti, to]) t.release();
  });
}

Deno.test("embed with the table bound in row chunks fills every token once", async () => {
  const gpu = await getGpu();
  const V = 1000, H = 70, T = 517;
  const table = randomF32(V * H, 31), ids = randomIds(T, V, 32);
  ids[0] = 0;
  ids[T - 1] = V - 1;
  const chunks = rowChunks(V, H * 4, 200_000, gpu.limits.align);
  if (chunks.length < 2) throw new Error(`expected at least two chunks, got ${chunks.length}`);
  const tt = await Tensor.from(gpu, table, [V, H], "table");
  const ti = await Tensor.from(gpu, ids, [T], "ids");
  const init = new Float32Array(H * T).fill(-7);
  const to = await Tensor.from(gpu, init, [H, T], "out");
  // Only the second chunk: tokens of the other rows keep their old values.
  const c = chunks[1];
  embed(gpu, tt.rows(c.row0, c.rows), ti.all, to.all, c.rows, H, T, c.row0);
  const part = embedRef(
    table.subarray(c.row0 * H, (c.row0 + c.rows) * H),
    ids,
    c.rows,
    H,
    T,
    c.row0,
    init,
  );
  assertClose(await to.toF32(), part, 0, 0, "one chunk");
  for (const c of chunks) embed(gpu, tt.rows(c.row0, c.rows), ti.all, to.all, c.rows, H, T, c.row0);
  assertClose(await to.toF32(), embedRef(table, ids, V, H, T), 0, 0, "all chunks");
  for (const t of [tt, ti, to]) t.release();
});

Deno.test("embed covers more than 65,535 workgroups (2-D grid)", async () => {
  const gpu = await getGpu();
  const V = 50, H = 4097, T = 4099;
  const table = randomF32(V * H, 41), ids = randomIds(T, V, 42);
  const tt = await Tensor.from(gpu, table, [V, H], "table");
  const ti = await Tensor.from(gpu, ids, [T], "ids");
  const to = Tensor.empty(gpu, [H, T], "out");
  embed(gpu, tt.all, ti.all, to.all, V, H, T);
  assertClose(await to.toF32(), embedRef(table, ids, V, H, T), 0, 0, "embed");
  for (const t of [tt, ti, to]) t.release();
});

Deno.test("checkIds names the first id outside the vocabulary", () => {
  checkIds(new Uint32Array([0, 5, 9]), 10);
  let msg = "";
  try {
    checkIds(new Uint32Array([0, 10, 11]), 10);
  } catch (e) {
    msg = (e as Error).message;
  }
  if (!msg.includes("id 10 at position 1")) throw new Error(`unexpected message "${msg}"`);
});
