// What the server sends for the page: "/" the page, "/app.js" the bundled script (generated
// into bundle.gen.ts by `deno task build-web`, so nothing is read beside the sources at run time).
import { APP_JS } from "./bundle.gen.ts";
import { PAGE_HTML } from "./page.ts";

export interface WebAsset {
  body: Uint8Array | string;
  type: string;
}

/** The asset at a URL path, or null (404). */
export function webAsset(path: string): WebAsset | null {
  switch (path) {
    case "/":
    case "/index.html":
      return { body: PAGE_HTML, type: "text/html; charset=utf-8" };
    case "/app.js":
      return { body: APP_JS, type: "text/javascript; charset=utf-8" };
    default:
      return null;
  }
}
