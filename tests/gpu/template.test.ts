// The WGSL template expander that generates the unrolled shaders.
import assert from "node:assert/strict";
import { expandWgsl } from "../../src/gpu/template.ts";

Deno.test("shader template expands nested //#for blocks", () => {
  const src = "a ${D}\n//#for j < P\nx${j}\n//#for k < D\ny${j}_${k}\n//#end\n//#end\nz";
  assert.equal(expandWgsl(src, { D: 2, P: 2 }), "a 2\nx0\ny0_0\ny0_1\nx1\ny1_0\ny1_1\nz");
  assert.throws(() => expandWgsl("//#for j < P\nx", { P: 1 }), /without \/\/#end/);
});

Deno.test("expandWgsl repeats, keeps and substitutes", () => {
  const src = [
    "//#for i < K",
    "a${i * 2 + 1}",
    "//#if i % 2 == 0 && K > 1",
    "even ${T}",
    "//#end",
    "//#end",
    "// ${not expanded}",
  ].join("\n");
  const got = expandWgsl(src, { K: 3, T: "f32" });
  const want = "a1\neven f32\na3\na5\neven f32\n// ${not expanded}";
  if (got !== want) throw new Error(`expandWgsl gave ${JSON.stringify(got)}`);
});

Deno.test("expandWgsl names the template and line of a bad expression", () => {
  assert.throws(() => expandWgsl("a\n${K +}", { K: 1 }, "x.wgsl"), /x\.wgsl:2: bad template/);
});
