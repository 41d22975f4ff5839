// End-to-end compression without finetuning against faiss's k-means of the same matrices: the
// project as a user runs it (`deno run tasks/compress.ts`, process start included) and
// bench/peers/faiss_model.py (its clustering alone, and its whole process), side by side.
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));

/** Seconds of a command's wall time and its stdout. */
async function timed(cmd: string, args: string[]): Promise<{ seconds: number; stdout: string }> {
  const t0 = performance.now();
  // Peers at their best: OpenBLAS picks its own core type and cache size.
  const env = Deno.env.toObject();
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const out = await new Deno.Command(cmd, {
    args,
    stdout: "piped",
    stderr: "piped",
    env,
    clearEnv: true,
  }).output();
  const seconds = (performance.now() - t0) / 1000;
  const dec = new TextDecoder();
  if (out.code !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${dec.decode(out.stderr)}`);
  return { seconds, stdout: dec.decode(out.stdout) };
}

/** faiss from Debian's python3 (never a dependency): its JSON line, or null when absent. */
export async function faissModel(
  model: string,
  d: number,
  n: number,
  iters: number,
): Promise<Record<string, unknown> | null> {
  const py = "/usr/bin/python3";
  try {
    await timed(py, ["-c", "import faiss"]);
  } catch {
    console.error("bench: /usr/bin/python3 has no faiss (apt install python3-faiss): peer skipped");
    return null;
  }
  const r = await timed(py, [
    `${ROOT}bench/peers/faiss_model.py`,
    model,
    `${d}`,
    `${n}`,
    `${iters}`,
  ]);
  return { ...JSON.parse(r.stdout.trim()), wall_s: r.seconds };
}

export async function benchCompress(
  model: string,
  d: number,
  n: number,
  iters: number,
): Promise<Record<string, unknown>> {
  const dir = await Deno.makeTempDir({ prefix: "cluscomp-bench-compress-" });
  const args = [
    "run",
    "-A",
    `${ROOT}tasks/compress.ts`,
    "--model",
    model,
    "--out",
    `${dir}/out`,
    "--d",
    `${d}`,
    "--n",
    `${n}`,
    "--iters",
    `${iters}`,
    "--no-finetune",
    "--quiet",
    "--json",
  ];
  const run = await timed(Deno.execPath(), args);
  const r = JSON.parse(run.stdout);
  await Deno.remove(dir, { recursive: true });
  const peer = await faissModel(model, d, n, iters);
  return {
    bench: "compress",
    model: model.split("/").pop(),
    d,
    n,
    iters,
    process_s: run.seconds,
    cluster_s: r.seconds.cluster,
    objective: r.blocks.reduce(
      (a: number, b: { facts: { objective: number }[] }) =>
        a + b.facts.reduce((x, f) => x + f.objective, 0),
      0,
    ),
    ...(peer
      ? {
        faiss_cluster_s: peer.cluster_s,
        faiss_process_s: peer.process_s,
        faiss_objective: peer.objective,
        vs_faiss_cluster: (run.seconds as number) / (peer.cluster_s as number),
      }
      : {}),
  };
}
