// `deno task build-web`: bundles the browser page's script into src/web/bundle.gen.ts.
import { BUNDLE_MODULE, bundleApp, bundleModule } from "../src/web/build.ts";
import { writeFileAtomic } from "../src/io/atomic.ts";

const text = bundleModule(await bundleApp());
await writeFileAtomic(BUNDLE_MODULE, new TextEncoder().encode(text));
console.log(`wrote ${BUNDLE_MODULE} (${(text.length / 1024).toFixed(0)} KiB)`);
