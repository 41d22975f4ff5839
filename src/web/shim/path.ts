// node:path for the browser bundle (posix, the few functions the readers use for messages):
// tasks/build_web.ts maps "node:path" here. The page's paths are URLs, joined with "/".

/** Joins with "/", dropping empty parts and doubled slashes (keeps a URL's "//"). */
export function join(...parts: string[]): string {
  const s = parts.filter((p) => p !== "").join("/");
  return s.replace(/([^:/])\/{2,}/g, "$1/");
}

export function basename(p: string): string {
  const t = p.replace(/\/+$/, "");
  return t.slice(t.lastIndexOf("/") + 1);
}

export function dirname(p: string): string {
  const t = p.replace(/\/+$/, "");
  const i = t.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : t.slice(0, i);
}
