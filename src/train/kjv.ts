// The King James Bible from Debian's bible-kjv package (public domain): fetching it, normalizing
// it to one verse per line under "Book N" chapter headings, and the deterministic split.
import { existsSync } from "node:fs";
import { UserError } from "../errors.ts";

export const BIBLE = "/usr/bin/bible";
/** Every verse, Genesis 1:1 to Revelation 22:21. */
const RANGE = "gen1:1-rev22:21";
const INSTALL = "apt-get install -y bible-kjv";

export interface Chapter {
  /** "Genesis 1" */
  heading: string;
  verses: string[];
}

async function run(cmd: string, args: string[]): Promise<{ ok: boolean; out: string }> {
  const r = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  return { ok: r.success, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
}

/** Installs bible-kjv when /usr/bin/bible is missing (as root), or says what to install. */
export async function ensureBible(log: (msg: string) => void = () => {}): Promise<void> {
  if (existsSync(BIBLE)) return;
  if (Deno.uid() !== 0) {
    throw new UserError(
      `${BIBLE} not found: install Debian's KJV Bible first (sudo ${INSTALL})`,
    );
  }
  log(`${BIBLE} not found; running ${INSTALL}`);
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  const apt = async (args: string[]) => {
    const r = await new Deno.Command("apt-get", { args, env, stdout: "piped", stderr: "piped" })
      .output();
    return r.success;
  };
  if (!(await apt(["install", "-y", "bible-kjv"]))) {
    await apt(["update"]);
    if (!(await apt(["install", "-y", "bible-kjv"]))) {
      throw new UserError(`${INSTALL} failed; install Debian's bible-kjv package by hand`);
    }
  }
  if (!existsSync(BIBLE)) throw new UserError(`${INSTALL} did not provide ${BIBLE}`);
}

/** The raw output of `bible gen1:1-rev22:21`. */
export async function readBible(): Promise<string> {
  const r = await run(BIBLE, [RANGE]);
  if (!r.ok) throw new UserError(`${BIBLE} ${RANGE} failed: ${r.out.split("\n")[0]}`);
  return r.out;
}

/**
 * Parses the `bible` output: a heading line ("Genesis 1") after a blank line, verses as
 * "  N text" with wrapped continuation lines, which are joined with one space.
 */
export function parseBible(raw: string): Chapter[] {
  const chapters: Chapter[] = [];
  let cur: Chapter | null = null;
  let blank = true;
  for (const line of raw.replace(/\r\n/g, "\n").split("\n")) {
    if (line.trim() === "") {
      blank = true;
      continue;
    }
    const verse = /^\s+\d+ (.*)$/.exec(line);
    if (verse) {
      if (!cur) throw new Error(`bible output: a verse before any heading: ${line}`);
      cur.verses.push(verse[1].trim());
    } else if (blank) {
      cur = { heading: line.trim(), verses: [] };
      chapters.push(cur);
    } else {
      if (!cur || cur.verses.length === 0) throw new Error(`bible output: stray line: ${line}`);
      cur.verses[cur.verses.length - 1] += " " + line.trim();
    }
    blank = false;
  }
  return chapters.filter((c) => c.verses.length > 0);
}

/** A chapter as text: its heading, then one verse per line, then a blank line. */
export function chapterText(c: Chapter): string {
  return `${c.heading}\n${c.verses.join("\n")}\n\n`;
}

export interface Split {
  train: Chapter[];
  heldout: Chapter[];
}

/** Every `every`-th chapter (the 10th, 20th, ... of the whole Bible) is held out. */
export function splitChapters(chapters: Chapter[], every = 10): Split {
  const train: Chapter[] = [], heldout: Chapter[] = [];
  chapters.forEach((c, i) => ((i + 1) % every === 0 ? heldout : train).push(c));
  return { train, heldout };
}

/**
 * About `bytes` of text spread over the whole list: every s-th chapter, s chosen so that the
 * total is close to `bytes`, stopping before exceeding it.
 */
export function spreadSample(chapters: Chapter[], bytes: number): string {
  const enc = new TextEncoder();
  const sizes = chapters.map((c) => enc.encode(chapterText(c)).length);
  const total = sizes.reduce((a, b) => a + b, 0);
  const stride = Math.max(1, Math.ceil(total / bytes));
  let out = "", have = 0;
  for (let i = 0; i < chapters.length; i += stride) {
    if (have + sizes[i] > bytes && have > 0) break;
    out += chapterText(chapters[i]);
    have += sizes[i];
  }
  return out;
}
