// Helpers shared by tests: seeded random data and the tolerance check.
import { fileURLToPath } from "node:url";
import type { Gpu } from "../src/gpu/device.ts";
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
