// `deno task train-fixture`: seeded --quick runs are byte-identical, and the committed fixture
// (fixtures/kjv-llama) loads and reproduces the held-out perplexity its train.json and README
// state.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { evaluatePerplexity } from "../../src/eval/perplexity.ts";
import { readText } from "../../src/io/text.ts";
import { Tokenizer } from "../../src/io/tokenizer.ts";
import { openModel } from "../../src/format/open.ts";
import { sha256File } from "../../src/io/hash.ts";
import { BIBLE } from "../../src/train/kjv.ts";
import { fromFileUrl } from "../util.ts";

const ROOT = fromFileUrl(new URL("../..", import.meta.url));
const TASK = `${ROOT}/tasks/train_fixture.ts`;
const FIXTURE = `${ROOT}/fixtures/kjv-llama`;
const HAS_BIBLE = existsSync(BIBLE);
const HAS_FIXTURE = existsSync(`${FIXTURE}/train.json`);

if (!HAS_BIBLE) {
  console.warn(`${BIBLE} not found (apt-get install bible-kjv): --quick runs skipped`);
}
if (!HAS_FIXTURE) console.warn(`${FIXTURE}/train.json not found: fixture checks skipped`);

async function trainTask(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", TASK, ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
}

Deno.test("train-fixture rejects bad flags with one line", async () => {
  const r = await trainTask("--steps", "0");
  assert.equal(r.code, 1);
  assert.match(r.err, /^error: train-fixture: --steps must be an integer >= 1 \(got "0"\)\n$/);
});

Deno.test({
  name: "two --quick runs with the same seed write byte-identical models",
  ignore: !HAS_BIBLE,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      const runs: Record<string, string> = {};
      for (const [name, seed] of [["a", "1"], ["b", "1"], ["c", "2"]]) {
        runs[name] = `${dir}/${name}`;
        const r = await trainTask("--quick", "--quiet", "--seed", seed, "--out", runs[name]);
        assert.equal(r.code, 0, r.err);
        assert.match(r.out, /^wrote .*held-out ppl \d/);
      }
      const bytes = (run: string, f: string) => Deno.readFileSync(`${runs[run]}/${f}`);
      for (const f of ["model.safetensors", "tokenizer.json", "config.json", "heldout.txt"]) {
        assert.deepEqual(bytes("a", f), bytes("b", f), `${f} differs between equal seeds`);
      }
      assert.notDeepEqual(bytes("a", "model.safetensors"), bytes("c", "model.safetensors"));
      // The tokenizer and data do not depend on the seed.
      assert.deepEqual(bytes("a", "tokenizer.json"), bytes("c", "tokenizer.json"));
      const report = JSON.parse(new TextDecoder().decode(bytes("a", "train.json")));
      assert.equal(report.quick, true);
      assert.equal(report.training.steps, 3);
      assert.ok(Number.isFinite(report.heldout.ppl));
      const m = await openModel(runs.a);
      assert.equal(m.cfg.vocab, 1024);
      m.index.close();
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "committed kjv-llama fixture reproduces its held-out perplexity",
  ignore: !HAS_FIXTURE,
  fn: async () => {
    const report = JSON.parse(await Deno.readTextFile(`${FIXTURE}/train.json`));
    assert.equal(report.quick, false, "the committed fixture is a --quick run");
    // train.json describes exactly the committed files.
    let total = 0;
    for (const [f, info] of Object.entries(report.files as Record<string, { sha256: string }>)) {
      assert.equal(await sha256File(`${FIXTURE}/${f}`), info.sha256, `${f} changed since training`);
      total += (await Deno.stat(`${FIXTURE}/${f}`)).size;
    }
    assert.ok(total < 4_000_000, `fixture files take ${total} bytes`);

    const m = await openModel(FIXTURE);
    const c = m.cfg;
    m.index.close();
    assert.deepEqual(
      [c.vocab, c.hidden, c.intermediate, c.layers, c.heads, c.kvHeads, c.maxPositions],
      [1024, 128, 384, 4, 4, 2, 256],
    );
    assert.equal(c.tieEmbeddings, false);
    assert.equal(c.torchDtype, "bfloat16");
    assert.equal(m.index.info("lm_head.weight").dtype, "BF16");

    const tok = await Tokenizer.load(FIXTURE);
    for (const f of ["heldout.txt", "calib.txt"]) {
      const text = await readText(`${FIXTURE}/${f}`);
      assert.equal(tok.decode(tok.encode(text)), text, `${f} round trip`);
    }

    const r = await evaluatePerplexity({
      model: FIXTURE,
      text: `${FIXTURE}/heldout.txt`,
      seqlen: 128,
    });
    const h = report.heldout;
    assert.equal(h.seqlen, 128);
    assert.equal(r.windows, h.windows);
    assert.equal(r.tokens, h.tokens);
    assert.ok(
      Math.abs(r.ppl - h.ppl) <= 1e-4 * h.ppl,
      `eval gives ppl ${r.ppl}, train.json states ${h.ppl}`,
    );
    const readme = await Deno.readTextFile(`${FIXTURE}/README.md`);
    assert.ok(readme.includes(`| ${h.ppl.toFixed(4)} |`), "README states the held-out ppl");
    assert.ok(
      readme.includes(
        "deno task eval --model fixtures/kjv-llama --text " +
          "fixtures/kjv-llama/heldout.txt --seqlen 128",
      ),
    );
    // Clearly better than token frequencies alone.
    assert.ok(r.ppl < report.unigram_ppl / 3, `ppl ${r.ppl} vs unigram ${report.unigram_ppl}`);
  },
});
