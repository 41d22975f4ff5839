// Locates ../shared (real fixtures and texts) and lets tests skip cleanly when it is absent.
import { existsSync } from "node:fs";
import { fromFileUrl } from "./util.ts";

/** Absolute path of ../shared beside the repository, or CLUSCOMP_SHARED. */
export const SHARED: string = Deno.env.get("CLUSCOMP_SHARED") ??
  fromFileUrl(new URL("../../shared", import.meta.url));

export const HAS_SHARED: boolean = existsSync(`${SHARED}/fixtures`);

if (!HAS_SHARED) {
  console.warn(`../shared not found at ${SHARED}: tests that need the real fixtures are skipped`);
}

export const STORIES = `${SHARED}/fixtures/stories260K`;
export const TINYLLAMA = `${SHARED}/fixtures/tinyllama-6.8m`;
export const WIKI = `${SHARED}/data/wikitext2/wiki.test.raw`;
export const TINYSTORIES = `${SHARED}/data/tinystories/tinystories_val.txt`;

/** Reads a fixture's references/*.json. */
export function readReference(modelDir: string): Record<string, unknown> {
  const name = modelDir.split("/").pop()!;
  return JSON.parse(Deno.readTextFileSync(`${modelDir}/references/${name}.json`));
}
