// Imports flow one way: cli -> pipeline -> stages -> model -> kernels -> gpu, with io, util and
// errors usable from anywhere. A test that fails on an import from a higher layer or a cycle.
import assert from "node:assert/strict";
import { dirname, join, normalize, relative } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../", import.meta.url));

/** Layer of each folder under src/ (higher may import lower or equal, never the reverse). */
export const LAYERS: Record<string, number> = {
  cli: 6,
  bench: 6,
  serve: 6,
  web: 6,
  pipeline: 5,
  method: 4,
  cluster: 4,
  finetune: 4,
  eval: 4,
  export: 4,
  format: 4,
  train: 4,
  model: 3,
  runner: 3,
  kernels: 2,
  gpu: 1,
  io: 0,
  util: 0,
  "errors.ts": 0,
};

async function sources(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) out.push(...await sources(p));
    else if (e.name.endsWith(".ts")) out.push(p);
  }
  return out;
}

/** src/-relative file -> the src/ files it imports. */
export async function importGraph(): Promise<Map<string, string[]>> {
  const graph = new Map<string, string[]>();
  for (const file of await sources(join(ROOT, "src"))) {
    const text = await Deno.readTextFile(file);
    const deps: string[] = [];
    for (const m of text.matchAll(/(?:from|import)\s+"(\.[^"]+\.ts)"/g)) {
      deps.push(relative(join(ROOT, "src"), normalize(join(dirname(file), m[1]))));
    }
    graph.set(relative(join(ROOT, "src"), file), deps);
  }
  return graph;
}

function layerOf(file: string): number {
  const top = file.split("/")[0];
  const l = LAYERS[top];
  if (l === undefined) throw new Error(`src/${file}: folder "${top}" has no layer in LAYERS`);
  return l;
}

/** Imports from a higher layer, as "a -> b". */
export function backReferences(graph: Map<string, string[]>): string[] {
  const bad: string[] = [];
  for (const [a, deps] of graph) {
    for (const b of deps) if (layerOf(b) > layerOf(a)) bad.push(`src/${a} -> src/${b}`);
  }
  return bad;
}

/** One cycle per strongly connected loop found by depth-first search, as "a -> b -> a". */
export function cycles(graph: Map<string, string[]>): string[] {
  const state = new Map<string, 1 | 2>();
  const stack: string[] = [];
  const found: string[] = [];
  const visit = (u: string) => {
    state.set(u, 1);
    stack.push(u);
    for (const v of graph.get(u) ?? []) {
      if (state.get(v) === 1) found.push([...stack.slice(stack.indexOf(v)), v].join(" -> "));
      else if (!state.has(v)) visit(v);
    }
    stack.pop();
    state.set(u, 2);
  };
  for (const u of graph.keys()) if (!state.has(u)) visit(u);
  return found;
}

Deno.test("imports flow one way: no module imports from a higher layer", async () => {
  const bad = backReferences(await importGraph());
  assert.deepEqual(bad, [], `imports from a higher layer:\n${bad.join("\n")}`);
});

Deno.test("imports have no cycles", async () => {
  const bad = cycles(await importGraph());
  assert.deepEqual(bad, [], `import cycles:\n${bad.join("\n")}`);
});

Deno.test("the layer checks catch a planted back-reference and a planted cycle", () => {
  const g = new Map([
    ["model/a.ts", ["kernels/b.ts"]],
    ["kernels/b.ts", ["model/a.ts"]],
  ]);
  assert.deepEqual(backReferences(g), ["src/kernels/b.ts -> src/model/a.ts"]);
  assert.equal(cycles(g).length, 1);
  assert.deepEqual(cycles(new Map([["model/a.ts", ["kernels/b.ts"]], ["kernels/b.ts", []]])), []);
});
