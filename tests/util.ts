// Helpers shared by tests: seeded random data and the tolerance check.
import { fileURLToPath } from "node:url";
import type { Gpu } from "../src/gpu/device.ts";
import { decodeSafetensors } from "../src/io/safetensors.ts";
import { Rng } from "../src/util/rng.ts";

export function fromFileUrl(url: URL): string {
  return fileURLToPath(url);
}

/** Seeded uniform values in [lo, hi). */
export function randomF32(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const rng = new Rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * rng.next();
  return out;
}

/**
 * Asserts |got - want| <= atol + rtol * |want| elementwise; on failure throws with the
 * first mismatches and their indices.
 */
export function assertClose(
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  atol: number,
  rtol: number,
  label = "values",
): void {
  if (got.length !== want.length) {
    throw new Error(`${label}: length ${got.length} != expected ${want.length}`);
  }
  const bad: string[] = [];
  let count = 0;
  let worst = 0;
  for (let i = 0; i < got.length; i++) {
    const g = got[i], w = want[i];
    const err = Math.abs(g - w);
    const ok = err <= atol + rtol * Math.abs(w);
    if (!ok || Number.isNaN(g) !== Number.isNaN(w)) {
      count++;
      worst = Math.max(worst, err);
      if (bad.length < 10) bad.push(`  [${i}] got ${g} want ${w} (|diff| ${err.toExponential(3)})`);
    }
  }
  if (count > 0) {
    throw new Error(
      `${label}: ${count} of ${got.length} outside atol ${atol} + rtol ${rtol}; worst ${worst}\n` +
        bad.join("\n"),
    );
  }
}

/** The same Gpu seen through a smaller storage binding limit. */
export function withMaxBinding(gpu: Gpu, bytes: number): Gpu {
  const limits = { ...gpu.limits, maxBinding: bytes };
  return new Proxy(gpu, {
    get(target, key) {
      if (key === "limits") return limits;
      const v = Reflect.get(target, key, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}

/** Every tensor of a model folder's shards, name -> bytes. */
export async function folderTensors(dir: string): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  for await (const e of Deno.readDir(dir)) {
    if (!e.name.endsWith(".safetensors")) continue;
    const p = `${dir}/${e.name}`;
    for (const t of decodeSafetensors(await Deno.readFile(p), p)) out.set(t.name, t.data);
  }
  return out;
}

/** Names of the tensors whose bytes differ between two folders' tensors (same names). */
export function changedTensors(a: Map<string, Uint8Array>, b: Map<string, Uint8Array>): string[] {
  if ([...a.keys()].sort().join() !== [...b.keys()].sort().join()) {
    throw new Error("the folders hold different tensor names");
  }
  return [...a.keys()].filter((k) => {
    const x = a.get(k)!, y = b.get(k)!;
    return x.length !== y.length || x.some((v, i) => v !== y[i]);
  }).sort();
}
