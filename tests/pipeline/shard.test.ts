// The cluster stage sharded across processes: the split, the shard index from flags and the
// schedulers' environment, the work directory's shard mode (shared lock, per-shard lock, pending
// units adopted by the whole run), and on stories260K four shards as four processes, then the
// finishing run, byte-identical to one process: as is, with a shard SIGKILLed and rerun, and
// with a shard run twice at once.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { UserError } from "../../src/errors.ts";
import { WorkDir } from "../../src/io/workdir.ts";
import { blockCosts, resolveShard, splitUnits } from "../../src/pipeline/shard.ts";
import { Rng } from "../../src/util/rng.ts";
import { HAS_SHARED, STORIES } from "../shared.ts";
import { assertSameOutputs, compressArgs, killLanded, runTask } from "./run.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const bytes = (s: string) => new TextEncoder().encode(s);

function userError(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof UserError, `expected a UserError, got ${e}`);
    assert.ok(!e.message.includes("\n"), `one line: ${e.message}`);
    return e.message;
  }
  throw new Error("expected a UserError, got none");
}

async function userErrorAsync(p: Promise<unknown>): Promise<string> {
  const e = await p.then(() => null, (e) => e);
  assert.ok(e instanceof UserError, `expected a UserError, got ${e}`);
  return e.message;
}

Deno.test("split: every unit once, deterministic, balanced by cost not count", () => {
  // One costly unit and ten cheap ones: by count each shard would take 5.5 units; by cost the
  // costly one is alone.
  const costs = [1, 1, 1, 1, 1, 10, 1, 1, 1, 1, 1];
  const split = splitUnits(costs, 2);
  assert.deepEqual(split, [[5], [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]]);
  assert.deepEqual(splitUnits(costs, 2), split, "deterministic");
  // Equal costs: round robin; more shards than units: empty shards.
  assert.deepEqual(splitUnits([3, 3, 3, 3, 3], 4), [[0, 4], [1], [2], [3]]);
  assert.deepEqual(splitUnits([2, 2], 3), [[0], [1], []]);
  // Random costs: a partition whose heaviest shard is within the largest unit of the mean.
  const rng = new Rng(14);
  for (let t = 0; t < 50; t++) {
    const c = Array.from({ length: 1 + rng.int(40) }, () => 1 + rng.int(1000));
    const n = 1 + rng.int(9);
    const s = splitUnits(c, n);
    assert.deepEqual(s.flat().sort((a, b) => a - b), c.map((_, i) => i));
    const loads = s.map((u) => u.reduce((a, i) => a + c[i], 0));
    const mean = c.reduce((a, b) => a + b, 0) / n;
    assert.ok(Math.max(...loads) <= mean + Math.max(...c), `loads ${loads}`);
  }
});

Deno.test("block costs follow the k-means work of each block's plan", () => {
  const cfg = {
    layers: 2,
    hidden: 64,
    intermediate: 172,
    heads: 8,
    kvHeads: 4,
    headDim: 8,
  } as unknown as Parameters<typeof blockCosts>[0];
  const plan = ["q", "k", "v", "o", "gate", "up", "down"].map((kind) => ({
    kind,
    d: 2,
    n: 32,
    splits: 1,
  }));
  const c = blockCosts(cfg, plan, { iters: 5, restarts: 1 });
  // q, o: 64 x 64; k, v: 32 out x 64 in; gate, up: 172 x 64; down: 64 x 172.
  const evals = (out: number, inp: number) => inp * Math.ceil(out / 2) * 32 * 6;
  const want = 2 * evals(64, 64) + 2 * evals(32, 64) + 2 * evals(172, 64) + evals(64, 172);
  assert.deepEqual(c, [want, want]);
  // Without a plan (RTN): the weights.
  assert.equal(
    blockCosts(cfg, undefined, { iters: 5, restarts: 1 })[0],
    2 * 64 * 64 + 2 * 32 * 64 + 3 * 172 * 64,
  );
});

Deno.test("shard index: --shard, Kubernetes, Slurm; bad values name the flag or variable", () => {
  assert.deepEqual(resolveShard("2/4", undefined, {}), { index: 2, count: 4 });
  assert.equal(resolveShard(undefined, undefined, {}), null);
  assert.deepEqual(resolveShard(undefined, "8", { JOB_COMPLETION_INDEX: "7" }), {
    index: 7,
    count: 8,
  });
  assert.deepEqual(
    resolveShard(undefined, undefined, { SLURM_ARRAY_TASK_ID: "0", SLURM_ARRAY_TASK_COUNT: "3" }),
    { index: 0, count: 3 },
  );
  // --shard wins over the environment.
  assert.deepEqual(resolveShard("1/2", undefined, { SLURM_ARRAY_TASK_ID: "5" }), {
    index: 1,
    count: 2,
  });
  const cases: [string | undefined, string | undefined, Record<string, string>, RegExp][] = [
    ["4/4", undefined, {}, /--shard: the shard index must be from 0 to 3 \(got "4\/4"\)/],
    ["x", undefined, {}, /--shard must look like I\/N/],
    ["0/0", undefined, {}, /--shard: the shard count must be >= 1/],
    ["1/4", "3", {}, /--shard 1\/4 and --shards 3 disagree/],
    [undefined, "0", {}, /--shards must be an integer >= 1/],
    [undefined, "4", {}, /--shards N needs JOB_COMPLETION_INDEX .* SLURM_ARRAY_TASK_ID/],
    [
      undefined,
      undefined,
      { JOB_COMPLETION_INDEX: "1" },
      /JOB_COMPLETION_INDEX is set .*--shards N/,
    ],
    [
      undefined,
      "4",
      { JOB_COMPLETION_INDEX: "4" },
      /JOB_COMPLETION_INDEX: the shard index must be from 0 to 3/,
    ],
    [
      undefined,
      "4",
      { JOB_COMPLETION_INDEX: "-1" },
      /JOB_COMPLETION_INDEX must be a non-negative integer/,
    ],
    [
      undefined,
      undefined,
      { SLURM_ARRAY_TASK_ID: "4", SLURM_ARRAY_TASK_COUNT: "4" },
      /SLURM_ARRAY_TASK_ID=4 is not below the 4 array tasks: submit the array as --array=0-3/,
    ],
    [
      undefined,
      undefined,
      { SLURM_ARRAY_TASK_ID: "1" },
      /SLURM_ARRAY_TASK_COUNT is not: give --shards N/,
    ],
    [
      undefined,
      "2",
      { SLURM_ARRAY_TASK_ID: "1", SLURM_ARRAY_TASK_COUNT: "3" },
      /SLURM_ARRAY_TASK_COUNT=3 and --shards 2 disagree/,
    ],
    [
      undefined,
      undefined,
      { SLURM_ARRAY_TASK_ID: "a", SLURM_ARRAY_TASK_COUNT: "3" },
      /SLURM_ARRAY_TASK_ID must be a non-negative integer \(got "a"\)/,
    ],
  ];
  for (const [flag, count, env, re] of cases) {
    assert.match(userError(() => resolveShard(flag, count, env)), re);
  }
});

Deno.test("deno task plan --shards N: the split compress makes, each shard's share and time", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-shard-plan-" });
  const rates = {
    adapter: "test",
    matmul_flops_per_s: 1e12,
    codebook_flops_per_s: 1e12,
    kmeans_evals_per_s: 2e11,
    kmeans_pruning: 0.1,
    dense_bytes_per_s: 1e11,
    codebook_bytes_per_s: 1e11,
  };
  await Deno.writeTextFile(`${dir}/rates.json`, JSON.stringify(rates));
  const config = `${ROOT}fixtures/configs/llama-2-7b.json`;
  const base = ["--config", config, "--gpu-memory", "48GB", "--d", "8", "--n", "65536"];
  const r = await runTask("plan", [
    ...base,
    "--shards",
    "3",
    "--throughput",
    `${dir}/rates.json`,
    "--json",
  ]);
  assert.equal(r.code, 0, r.stderr);
  const shards = JSON.parse(r.stdout).shards as {
    shard: string;
    blocks: number[];
    kmeans_evals: number;
    share: number;
    seconds: number;
  }[];
  // Llama-2-7B: 32 equal blocks; 4096 x 4096 (q, k, v, o), 11008 x 4096 (gate, up, down).
  const perBlock = (4 * 4096 * 512 + 3 * 4096 * 1376) * 65536 * 21;
  assert.deepEqual(shards.map((s) => s.shard), ["0/3", "1/3", "2/3"]);
  assert.deepEqual(shards.map((s) => s.blocks), splitUnits(new Array(32).fill(perBlock), 3));
  assert.deepEqual(shards.map((s) => s.blocks.length), [11, 11, 10]);
  for (const s of shards) {
    assert.equal(s.kmeans_evals, s.blocks.length * perBlock);
    assert.ok(Math.abs(s.share - s.blocks.length / 32) < 1e-12);
    assert.ok(Math.abs(s.seconds - s.kmeans_evals * 0.1 / 2e11) < 1e-6 * s.seconds);
  }
  const table = await runTask("plan", [...base, "--shards", "3"]);
  assert.equal(table.code, 0, table.stderr);
  assert.match(table.stdout, /\| 2\/3 \| 2, 5, 8, .*, 29 \| 31\.3% \|/);
  const bad = await runTask("plan", [...base, "--shards", "0"]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /--shards must be an integer >= 1/);
  await Deno.remove(dir, { recursive: true });
});

const STAGES = { cluster: { iters: 3 }, finetune: { epochs: 1 }, eval: null };
const INPUTS = { "config.json": "a".repeat(64), "model.safetensors": "b".repeat(64) };
const shardOpts = (index: number, count: number, onWait?: (m: string) => void) => ({
  last: "cluster",
  shard: { index, count },
  onWait,
});

Deno.test("work directory: shards side by side, pending units adopted by the whole run", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-shard-wd-" });
  const a = await WorkDir.open(dir, STAGES, INPUTS, undefined, shardOpts(0, 2));
  const b = await WorkDir.open(dir, STAGES, INPUTS, undefined, shardOpts(1, 2));
  await a.complete("cluster/block-000", "cluster/block-000.bin", bytes("c0"), { facts: [1] });
  await b.complete("cluster/block-001", "cluster/block-001.bin", bytes("c1"), { facts: [2] });
  await b.complete("cluster/block-002", "cluster/block-002.bin", bytes("c2"), { facts: [3] });
  assert.ok(!existsSync(`${dir}/manifest.msgpack`), "a shard never writes the manifest");
  // A whole run is refused while shards run, naming them; a shard while a whole run runs.
  const busy = await userErrorAsync(WorkDir.open(dir, STAGES, INPUTS));
  assert.match(
    busy,
    /is in use by shard 0\/2 \(process \d+ on .*\), shard 1\/2 .*wait for the shards/,
  );
  await a.close();
  await b.close();
  // A shard resumes what an earlier attempt left pending.
  const again = await WorkDir.open(dir, STAGES, INPUTS, undefined, shardOpts(1, 2));
  assert.deepEqual(await again.read("cluster/block-001"), bytes("c1"));
  await again.close();
  // A pending unit whose file no longer matches, or made with other settings, is not adopted.
  await Deno.writeFile(`${dir}/cluster/block-002.bin`, bytes("cX"));
  const other = await WorkDir.open(
    dir,
    { ...STAGES, cluster: { iters: 4 } },
    INPUTS,
    undefined,
    shardOpts(0, 1),
  );
  await other.complete("cluster/block-003", "cluster/block-003.bin", bytes("c3"), {});
  await other.close();

  const whole = await WorkDir.open(dir, STAGES, INPUTS);
  assert.deepEqual(whole.adopted.sort(), ["cluster/block-000", "cluster/block-001"]);
  assert.deepEqual(await whole.read("cluster/block-000"), bytes("c0"));
  assert.deepEqual((await whole.done("cluster/block-001"))?.info, { facts: [2] });
  assert.equal(await whole.done("cluster/block-002"), null);
  assert.equal(await whole.done("cluster/block-003"), null);
  assert.ok(!existsSync(`${dir}/pending/cluster/block-000.msgpack`), "adopted facts are removed");
  assert.ok(existsSync(`${dir}/pending/cluster/block-003.msgpack`), "others are left alone");
  const refused = await userErrorAsync(
    WorkDir.open(dir, STAGES, INPUTS, undefined, shardOpts(0, 2)),
  );
  assert.match(refused, /is in use by process \d+ on .* \(a run that is not a shard\)/);
  await whole.close();
  // The adopted units are in the manifest: found without their fact files.
  const next = await WorkDir.open(dir, STAGES, INPUTS);
  assert.deepEqual(next.adopted, []);
  assert.ok(await next.done("cluster/block-001"));
  await next.close();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("work directory: a stage-limited run keeps the later stages' settings and units", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-shard-wd-" });
  // First ever run stops after cluster: the later stages are not recorded, so the finishing run
  // with its own finetune settings is accepted.
  let w = await WorkDir.open(dir, { ...STAGES, finetune: null }, INPUTS, undefined, {
    last: "cluster",
  });
  await w.complete("cluster/block-000", "cluster/block-000.bin", bytes("c0"));
  await w.close();
  w = await WorkDir.open(dir, STAGES, INPUTS);
  assert.ok(await w.done("cluster/block-000"));
  await w.complete("finetune/block-000", "finetune/block-000.bin", bytes("f0"));
  await w.close();
  // A cluster-only run with no finetune settings keeps the finetune units and settings.
  w = await WorkDir.open(dir, { ...STAGES, finetune: null }, INPUTS, undefined, {
    last: "cluster",
  });
  await w.close();
  w = await WorkDir.open(dir, STAGES, INPUTS);
  assert.ok(await w.done("finetune/block-000"), "finetune unit kept");
  await w.close();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("work directory: a second attempt of a shard waits for the first", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-shard-wd-" });
  const first = await WorkDir.open(dir, STAGES, INPUTS, undefined, shardOpts(0, 2));
  const waits: string[] = [];
  let opened = false;
  const second = WorkDir.open(
    dir,
    STAGES,
    INPUTS,
    undefined,
    shardOpts(0, 2, (m) => {
      waits.push(m);
    }),
  ).then((w) => {
    opened = true;
    return w;
  });
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(opened, false, "the second attempt did not wait");
  assert.equal(waits.length, 1);
  assert.match(
    waits[0],
    /^shard 0\/2 is being run by process \d+ on .*; waiting for it to finish$/,
  );
  await first.complete("cluster/block-000", "cluster/block-000.bin", bytes("c0"));
  await first.close();
  const w = await second;
  assert.deepEqual(await w.read("cluster/block-000"), bytes("c0"), "sees the first's unit");
  await w.close();
  await Deno.remove(dir, { recursive: true });
});

// ---- four processes on stories260K ----

const FLAGS = ["--bits", "3", "--d", "2", "--iters", "5", "--no-finetune", "--json"];

interface Shard {
  child: Deno.ChildProcess;
  /** Resolves when stderr has matched `re` (or the process ended: then false). */
  seen(re: RegExp): Promise<boolean>;
  done: Promise<{ code: number; signal: Deno.Signal | null; stderr: string }>;
}

function spawnShard(out: string, shard: string): Shard {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      `${ROOT}tasks/compress.ts`,
      ...compressArgs(STORIES, out, [...FLAGS, "--stage", "cluster", "--shard", shard]),
    ],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let text = "";
  const waiters: { re: RegExp; resolve: (v: boolean) => void }[] = [];
  const dec = new TextDecoder();
  const read = (async () => {
    for await (const chunk of child.stderr) {
      text += dec.decode(chunk, { stream: true });
      for (const w of waiters.splice(0)) {
        if (w.re.test(text)) w.resolve(true);
        else waiters.push(w);
      }
    }
    for (const w of waiters.splice(0)) w.resolve(false);
  })();
  return {
    child,
    seen: (re) =>
      re.test(text)
        ? Promise.resolve(true)
        : new Promise((resolve) => waiters.push({ re, resolve })),
    done: (async () => {
      const status = await child.status;
      await read;
      return { code: status.code, signal: status.signal, stderr: text };
    })(),
  };
}

/** Cluster units computed (not resumed) in a run's JSON progress lines. */
function computed(stderr: string): number[] {
  return [...stderr.matchAll(/"stage":"cluster","done":\d+,"total":\d+,"block":(\d+),"elapsed_s"/g)]
    .map((m) => Number(m[1]));
}

function resumed(stderr: string): number[] {
  return [
    ...stderr.matchAll(/"stage":"cluster","done":\d+,"total":\d+,"block":(\d+),"resumed":"yes"/g),
  ]
    .map((m) => Number(m[1]));
}

async function finish(out: string): Promise<string> {
  const r = await runTask("compress", compressArgs(STORIES, out, FLAGS));
  assert.equal(r.code, 0, r.stderr);
  return r.stderr;
}

Deno.test({
  name: "four shards as processes, then the finishing run: byte-identical to one process",
  ignore: !HAS_SHARED,
  fn: async (t) => {
    const dir = await Deno.makeTempDir({ prefix: "cluscomp-shard-" });
    const whole = await runTask("compress", compressArgs(STORIES, `${dir}/whole`, FLAGS));
    assert.equal(whole.code, 0, whole.stderr);

    await t.step("four concurrent shards, then the finishing run adopts all", async () => {
      const out = `${dir}/four`;
      const runs = await Promise.all([0, 1, 2, 3].map((i) => spawnShard(out, `${i}/4`).done));
      const blocks: number[] = [];
      for (const r of runs) {
        assert.equal(r.code, 0, r.stderr);
        blocks.push(...computed(r.stderr));
      }
      assert.deepEqual(blocks.sort(), [0, 1, 2, 3, 4], "each block clustered once");
      // One plan for all: computed once, the others read it.
      assert.equal((await Array.fromAsync(Deno.readDir(`${out}.work/plans`))).length, 1);
      assert.ok(!existsSync(out), "shards write no output");
      const err = await finish(out);
      assert.match(err, /adopted 5 units that shards finished/);
      assert.deepEqual(computed(err), [], "the finishing run clustered nothing");
      await assertSameOutputs(`${dir}/whole`, out);
    });

    await t.step("a shard SIGKILLed at a random moment, rerun: resumes, same output", async () => {
      // Shard 0/4 holds two blocks (0 and 4). It is killed at a random moment while it clusters
      // them: during block 0, or after block 0 was kept; a kill that comes after both were kept
      // (a fast machine) tests nothing, and the attempt is repeated with shorter delays.
      const seed = Date.now() >>> 0;
      const rng = new Rng(seed);
      let out = "", left: number[] = [], landed = false;
      for (let attempt = 0; attempt < 3 && !landed; attempt++) {
        out = `${dir}/killed-${attempt}`;
        const others = [1, 2, 3].map((i) => spawnShard(out, `${i}/4`));
        const victim = spawnShard(out, "0/4");
        const phase = rng.int(2) === 0
          ? /"stage":"cluster","done":0/
          : /"stage":"cluster","done":1,"total":2,"block":0,"elapsed_s"/;
        assert.ok(await victim.seen(phase), "shard 0 ended before the moment to kill it");
        const delay = rng.int(80 >> attempt);
        await new Promise((r) => setTimeout(r, delay));
        const sent = await killLanded(victim.child);
        const killed = await victim.done;
        for (const o of others) assert.equal((await o.done).code, 0);
        left = computed(killed.stderr);
        landed = sent && killed.signal === "SIGKILL" && left.length < 2;
        console.log(
          `kill attempt ${attempt} (seed ${seed}): after ${
            phase.source.slice(0, 30)
          }... + ${delay} ms, ` +
            `landed ${sent}, blocks kept before it: [${left}]`,
        );
      }
      assert.ok(landed, "no kill landed while shard 0 was clustering");
      const rerun = await spawnShard(out, "0/4").done;
      assert.equal(rerun.code, 0, rerun.stderr);
      assert.deepEqual(resumed(rerun.stderr), left, "the rerun resumed what the kill left");
      assert.deepEqual(computed(rerun.stderr).sort(), [0, 4].filter((b) => !left.includes(b)));
      const err = await finish(out);
      assert.deepEqual(computed(err), []);
      await assertSameOutputs(`${dir}/whole`, out);
    });

    await t.step(
      "a shard run twice at once: the second waits, then resumes; a missing shard is clustered by the finishing run",
      async () => {
        const out = `${dir}/twice`;
        // Hold shard 1's lock so that both attempts are surely running at the same time, each
        // waiting for it; once released, one clusters block 1 and the other must wait for it.
        await Deno.mkdir(`${out}.work/shards`, { recursive: true });
        const hold = await Deno.open(`${out}.work/shards/shard-1-of-4.lock`, {
          read: true,
          write: true,
          create: true,
        });
        await hold.lock(true);
        const a = spawnShard(out, "1/4"), b = spawnShard(out, "1/4");
        const waiting = /shard 1\/4 is being run by another process; waiting for it to finish/;
        assert.ok(await a.seen(waiting), "attempt A did not wait");
        assert.ok(await b.seen(waiting), "attempt B did not wait");
        // Shard 3 is never run: the finishing run clusters its block.
        const rest = [0, 2].map((i) => spawnShard(out, `${i}/4`));
        hold.close();
        const [ra, rb] = [await a.done, await b.done];
        assert.equal(ra.code, 0, ra.stderr);
        assert.equal(rb.code, 0, rb.stderr);
        for (const r of rest) assert.equal((await r.done).code, 0);
        const runs = [ra, rb].map((r) => ({
          computed: computed(r.stderr),
          resumed: resumed(r.stderr),
        }));
        runs.sort((x, y) => y.computed.length - x.computed.length);
        assert.deepEqual(runs, [{ computed: [1], resumed: [] }, { computed: [], resumed: [1] }]);
        const err = await finish(out);
        assert.match(err, /adopted 4 units that shards finished/);
        assert.deepEqual(computed(err), [3]);
        await assertSameOutputs(`${dir}/whole`, out);
      },
    );

    await t.step("bad shard settings are one clear error", async () => {
      const bad = async (extra: string[], env: Record<string, string>, re: RegExp) => {
        const r = await new Deno.Command(Deno.execPath(), {
          args: [
            "run",
            "-A",
            `${ROOT}tasks/compress.ts`,
            ...compressArgs(STORIES, `${dir}/bad`, [...FLAGS, ...extra]),
          ],
          env,
          stdout: "piped",
          stderr: "piped",
        }).output();
        const err = new TextDecoder().decode(r.stderr);
        assert.equal(r.code, 1, err);
        assert.match(err, re);
      };
      await bad(["--shard", "1/4"], {}, /--shard shards the cluster stage: add --stage cluster/);
      await bad(
        ["--stage", "cluster", "--shard", "5/4"],
        {},
        /--shard: the shard index must be from 0 to 3/,
      );
      await bad(["--stage", "eval"], {}, /--stage must be cluster for this run \(got "eval"\)/);
      await bad(
        ["--stage", "cluster"],
        { SLURM_ARRAY_TASK_ID: "2", SLURM_ARRAY_TASK_COUNT: "2" },
        /SLURM_ARRAY_TASK_ID=2 is not below/,
      );
      assert.ok(!existsSync(`${dir}/bad`), "no output");
    });
    await Deno.remove(dir, { recursive: true });
  },
});
