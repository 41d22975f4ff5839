// node:fs for the browser bundle: tasks/build_web.ts maps "node:fs" here. The page reads the
// model through an HttpSource, so these are reached only by Deno-side code (writers, folder
// checks), which a page never calls; if one is, it says so instead of failing obscurely.

function notInBrowser(name: string): never {
  throw new Error(`node:fs ${name} is not available in a browser page`);
}

export function existsSync(_path: string): boolean {
  return notInBrowser("existsSync");
}

export function statSync(_path: string): never {
  return notInBrowser("statSync");
}
