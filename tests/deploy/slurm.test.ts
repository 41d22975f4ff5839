// A real Slurm on localhost runs deploy/slurm: the cluster stage as a job array (one shard per
// task), then the dependent finetune job (afterok); the output equals a single-process run.
// The test starts munged, slurmctld and slurmd itself with a generated slurm.conf and munge key
// in a temp folder (no systemd, no cgroups: proctrack/linuxproc, task/none), and skips with a
// message when Debian's slurm-wlm and munge are not installed (.ci/run installs them).
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { assertSameOutputs, runTask } from "../pipeline/run.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const MODEL = `${ROOT}fixtures/kjv-llama`;
const TOOLS = ["munged", "munge", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "scancel"];

function which(tool: string): string | null {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":").concat(["/usr/sbin", "/sbin"])) {
    if (dir && existsSync(`${dir}/${tool}`)) return `${dir}/${tool}`;
  }
  return null;
}

const missing = TOOLS.filter((t) => !which(t));
const SKIP = missing.length > 0
  ? `Slurm test skipped: ${missing.join(", ")} not found (apt-get install slurm-wlm munge)`
  : !existsSync(`${MODEL}/model.safetensors`)
  ? `Slurm test skipped: the embedded model ${MODEL} is missing`
  : null;
if (SKIP) console.warn(SKIP);

async function sh(
  cmd: string,
  args: string[],
  opts: { env?: Record<string, string>; cwd?: string } = {},
): Promise<{ code: number; out: string; err: string }> {
  const r = await new Deno.Command(which(cmd) ?? cmd, {
    args,
    env: opts.env,
    cwd: opts.cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
}

/** A TCP port nobody listens on now. */
function freePort(): number {
  for (;;) {
    const port = 20000 + Math.floor(Math.random() * 40000);
    try {
      Deno.listen({ port, hostname: "0.0.0.0" }).close();
      return port;
    } catch {
      // taken: try another
    }
  }
}

async function until(what: string, seconds: number, f: () => Promise<boolean>): Promise<void> {
  const end = Date.now() + seconds * 1000;
  while (Date.now() < end) {
    if (await f()) return;
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`timed out after ${seconds} s waiting for ${what}`);
}

/** munged, slurmctld and slurmd on this host, in `dir`; `stop` ends them. */
async function startSlurm(dir: string) {
  const host = (await sh("hostname", ["-s"])).out.trim();
  const user = (await sh("id", ["-un"])).out.trim();
  const key = new Uint8Array(1024);
  crypto.getRandomValues(key);
  await Deno.writeFile(`${dir}/munge.key`, key, { mode: 0o400 });
  for (const d of ["state", "spool", "log"]) await Deno.mkdir(`${dir}/${d}`);
  const conf = `${dir}/slurm.conf`;
  await Deno.writeTextFile(
    conf,
    [
      `ClusterName=cc${Date.now() % 100000}`,
      `SlurmctldHost=${host}`,
      `SlurmUser=${user}`,
      `SlurmdUser=${user}`,
      `SlurmctldPort=${freePort()}`,
      `SlurmdPort=${freePort()}`,
      "AuthType=auth/munge",
      "CredType=cred/munge",
      `AuthInfo=socket=${dir}/munge.sock`,
      `StateSaveLocation=${dir}/state`,
      `SlurmdSpoolDir=${dir}/spool`,
      `SlurmctldPidFile=${dir}/slurmctld.pid`,
      `SlurmdPidFile=${dir}/slurmd.pid`,
      `SlurmctldLogFile=${dir}/log/slurmctld.log`,
      `SlurmdLogFile=${dir}/log/slurmd.log`,
      "ProctrackType=proctrack/linuxproc",
      "TaskPlugin=task/none",
      "JobAcctGatherType=jobacct_gather/none",
      "AccountingStorageType=accounting_storage/none",
      "JobCompType=jobcomp/none",
      "SchedulerType=sched/builtin",
      "SelectType=select/cons_tres",
      "SelectTypeParameters=CR_Core",
      "MpiDefault=none",
      "ReturnToService=2",
      "SlurmdParameters=config_overrides",
      `NodeName=${host} CPUs=4 RealMemory=1000 State=UNKNOWN`,
      `PartitionName=test Nodes=${host} Default=YES MaxTime=INFINITE State=UP`,
      "",
    ].join("\n"),
  );
  const env = { SLURM_CONF: conf };
  const daemons: Deno.ChildProcess[] = [];
  const spawn = (cmd: string, args: string[]) =>
    daemons.push(
      new Deno.Command(which(cmd)!, { args, env, stdout: "null", stderr: "null" }).spawn(),
    );
  spawn("munged", [
    "-F",
    "--force",
    `--socket=${dir}/munge.sock`,
    `--key-file=${dir}/munge.key`,
    `--log-file=${dir}/log/munged.log`,
    `--pid-file=${dir}/munged.pid`,
    `--seed-file=${dir}/munged.seed`,
  ]);
  await until(
    "munged",
    20,
    async () => (await sh("munge", ["-S", `${dir}/munge.sock`, "-n"])).code === 0,
  );
  spawn("slurmctld", ["-D", "-f", conf]);
  spawn("slurmd", ["-D", "-f", conf]);
  await until("an idle Slurm node", 60, async () => {
    const r = await sh("sinfo", ["-h", "-o", "%T"], { env });
    return r.code === 0 && r.out.trim() === "idle";
  });
  return {
    env,
    logs: async () => {
      let text = "";
      for (const f of ["slurmctld.log", "slurmd.log"]) {
        const p = `${dir}/log/${f}`;
        if (existsSync(p)) text += `--- ${f}\n${(await Deno.readTextFile(p)).slice(-3000)}\n`;
      }
      return text;
    },
    stop: async () => {
      for (const d of daemons.reverse()) {
        try {
          d.kill("SIGTERM");
        } catch {
          // already gone
        }
        await d.status;
      }
    },
  };
}

/** A job's state from scontrol, e.g. "COMPLETED", "PENDING (Dependency)". */
async function jobState(env: Record<string, string>, id: string): Promise<string> {
  const r = await sh("scontrol", ["show", "job", id], { env });
  const state = /JobState=(\S+)/.exec(r.out)?.[1] ?? "UNKNOWN";
  const reason = /Reason=(\S+)/.exec(r.out)?.[1] ?? "";
  return `${state} (${reason})`;
}

const SHARDS = 3;

Deno.test({
  name: "Slurm: the deploy/slurm array job and dependent finetune job equal a single run",
  ignore: SKIP !== null,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "cluscomp-slurm-" });
    const flags = [
      "--bits",
      "2",
      "--iters",
      "5",
      "--calib",
      `${MODEL}/calib.txt`,
      "--calib-samples",
      "8",
      "--calib-seqlen",
      "64",
      "--epochs",
      "1",
      "--json",
    ];
    const single = await runTask("compress", [
      "--model",
      MODEL,
      "--out",
      `${dir}/single`,
      ...flags,
    ]);
    assert.equal(single.code, 0, single.stderr);

    const slurm = await startSlurm(dir);
    let ids: string[] = [];
    try {
      const out = `${dir}/sharded`;
      const sub = await sh("bash", [`${ROOT}deploy/slurm/submit.sh`], {
        cwd: dir,
        env: {
          ...slurm.env,
          SHARDS: String(SHARDS),
          CLUSCOMP_ARGS: ["--model", MODEL, "--out", out, ...flags].join(" "),
          DENO: Deno.execPath(),
        },
      });
      assert.equal(sub.code, 0, sub.err);
      const m = /cluster array job (\d+) \(3 shards\); finetune job (\d+) runs after it/.exec(
        sub.out,
      );
      assert.ok(m, sub.out);
      ids = [m[1], m[2]];
      let state = "";
      await until("the finetune job", 400, async () => {
        state = await jobState(slurm.env, m[2]);
        if (/DependencyNeverSatisfied|FAILED|CANCELLED|TIMEOUT/.test(state)) return true;
        return state.startsWith("COMPLETED");
      }).catch(async (e) => {
        throw new Error(`${e.message}: last state ${state}\n${await slurm.logs()}`);
      });
      const log = async (name: string) =>
        existsSync(`${dir}/${name}`) ? await Deno.readTextFile(`${dir}/${name}`) : "(no log)";
      const finetuneLog = await log(`cluscomp-finetune-${m[2]}.log`);
      assert.ok(state.startsWith("COMPLETED"), `finetune job ${state}\n${finetuneLog}`);
      // Every array task ran its own shard; the finishing run adopted all four blocks.
      const blocks: number[] = [];
      for (let i = 0; i < SHARDS; i++) {
        const text = await log(`cluscomp-cluster-${m[1]}_${i}.log`);
        const split = new RegExp(`shard ${i}/${SHARDS}: blocks \\[([\\d, -]*)\\]`).exec(text);
        assert.ok(split, `array task ${i} did not run shard ${i}/${SHARDS}:\n${text}`);
        blocks.push(...split[1].split(", ").map(Number));
      }
      assert.deepEqual(blocks.sort(), [0, 1, 2, 3]);
      assert.match(finetuneLog, /adopted 4 units that shards finished/);
      assert.doesNotMatch(
        finetuneLog,
        /"stage":"cluster","done":\d+,"total":4,"block":\d+,"elapsed_s"/,
      );
      assert.match(finetuneLog, /"stage":"finetune","done":4,"total":4/);
      await assertSameOutputs(`${dir}/single`, out);
    } finally {
      if (ids.length > 0) await sh("scancel", ids, { env: slurm.env });
      await slurm.stop();
    }
    await Deno.remove(dir, { recursive: true });
  },
});
