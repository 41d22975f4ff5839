// The page's bundle: src/web/bundle.gen.ts is what `deno task build-web` makes from the sources
// now (rebuilt to memory and compared), and webAsset serves the page, the script and 404s.
import assert from "node:assert/strict";
import { APP_JS } from "../../src/web/bundle.gen.ts";
import { BUNDLE_MODULE, bundleApp, bundleModule } from "../../src/web/build.ts";
import { webAsset } from "../../src/web/assets.ts";

Deno.test("bundle.gen.ts is up to date with the sources (deno task build-web)", async () => {
  const fresh = bundleModule(await bundleApp());
  const stored = await Deno.readTextFile(BUNDLE_MODULE);
  if (fresh !== stored) {
    let i = 0;
    while (i < fresh.length && fresh[i] === stored[i]) i++;
    assert.fail(
      `${BUNDLE_MODULE} is stale: run \`deno task build-web\`. First difference at character ` +
        `${i}: stored ${JSON.stringify(stored.slice(i, i + 80))}, ` +
        `fresh ${JSON.stringify(fresh.slice(i, i + 80))}`,
    );
  }
});

Deno.test("the bundle holds the shaders and no module a page cannot load", () => {
  assert.match(APP_JS, /@compute @workgroup_size/, "WGSL text imports are inlined");
  assert.doesNotMatch(APP_JS, /^\s*import\s/m, "no import statement left");
  assert.doesNotMatch(APP_JS, /from\s+["']node:/, "no node: module left");
  assert.match(APP_JS, /\/\/ src\/web\/shim\/path\.ts/, "node:path is the browser shim");
});

Deno.test("webAsset: the page at /, the script at /app.js, null for anything else", () => {
  const page = webAsset("/");
  assert.ok(page);
  assert.match(page.type, /^text\/html/);
  assert.match(String(page.body), /<script type="module" src="\/app\.js"><\/script>/);
  for (const id of ["prompt", "max-tokens", "use-server", "generate", "output", "stats"]) {
    assert.match(String(page.body), new RegExp(`id="${id}"`), `the page has #${id}`);
  }
  const js = webAsset("/app.js");
  assert.ok(js);
  assert.match(js.type, /^text\/javascript/);
  assert.equal(js.body, APP_JS);
  for (const p of ["/nope", "/app.js.map", "/model/files", "/../deno.json", ""]) {
    assert.equal(webAsset(p), null, p);
  }
});
