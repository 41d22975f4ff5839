// Finetuning step throughput: forward with kept activations, MSE gradient, backward to the
// codebooks, AdamW and re-decode, for one block of a real model on random codes, B windows of T
// tokens per step; beside it, when Debian's python3-torch is installed,
// bench/peers/torch_block_finetune.py (PyTorch eager on the same block, windows and steps; never a
// dependency).
import process from "node:process";
import { fileURLToPath } from "node:url";
import { type CodebookData, StudentBlock } from "../finetune/student.ts";
import type { Gpu } from "../gpu/device.ts";
import { Tensor } from "../gpu/tensor.ts";
import { linearNames, loadConfig, ropeInvFreq } from "../io/config.ts";
import { mseGrad } from "../kernels/mse.ts";
import { ropeTables } from "../kernels/rope.ts";
import { Rng } from "../util/rng.ts";

export async function benchFinetuneStep(
  gpu: Gpu,
  modelDir: string,
  T: number,
  steps: number,
  B = 1,
  withPeer = true,
): Promise<Record<string, unknown>> {
  const N = B * T;
  const cfg = await loadConfig(modelDir);
  const rng = new Rng(7);
  const d = 4, n = 256;
  const books: CodebookData[] = linearNames(0, cfg).map((lin) => ({
    kind: lin.kind,
    centroids: new Float32Array(n * d).map(() => (rng.next() - 0.5) * 0.1),
    codes: Array.from({ length: lin.in * Math.ceil(lin.out / d) }, () => rng.int(n)),
    n,
    d,
    splits: 1,
  }));
  const ones = new Float32Array(cfg.hidden).fill(1);
  const s = await StudentBlock.create(
    gpu,
    cfg,
    T,
    books,
    ones,
    ones,
    ropeTables(ropeInvFreq(cfg), T),
    B,
  );
  const random = (name: string) =>
    Tensor.from(
      gpu,
      new Float32Array(cfg.hidden * N).map(() => rng.normal()),
      [cfg.hidden, N],
      name,
    );
  const x = await random("x"), want = await random("want");
  const opt = { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1 };
  const step = () => {
    const y = s.forward(x, true);
    mseGrad(gpu, y.all, want.all, s.dy.all, s.sq.all, cfg.hidden, N, 2 / (cfg.hidden * N));
    s.backward();
    s.update(opt);
  };
  step();
  await gpu.sync();
  const times: number[] = [];
  const d0 = gpu.dispatches;
  // Process CPU time (llvmpipe's threads run in this process): steadier than wall time when the
  // machine is shared.
  const cpu0 = process.cpuUsage();
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    step();
    await gpu.sync();
    times.push(performance.now() - t0);
  }
  const dispatches = (gpu.dispatches - d0) / steps;
  const cpu = process.cpuUsage(cpu0);
  const cpuMs = (cpu.user + cpu.system) / 1000 / steps;
  times.sort((a, b) => a - b);
  const median = times[times.length >> 1];
  x.release();
  want.release();
  s.release();
  const tokensPerS = N / (median / 1000);
  const peer = withPeer ? await torchBlockFinetune(modelDir, T, steps, d, n, B) : null;
  return {
    name: "finetune_step",
    model: modelDir.split("/").pop(),
    shapes: `1 block, ${B} x ${T} tokens, d=${d} n=${n}`,
    windows: B,
    median_ms: median,
    cpu_ms_per_step: cpuMs,
    cpu_tokens_per_s: N / (cpuMs / 1000),
    min_ms: times[0],
    tokens_per_s: tokensPerS,
    dispatches_per_step: dispatches,
    ...(peer
      ? {
        torch_median_ms: peer.median_ms,
        torch_min_ms: peer.min_ms,
        torch_tokens_per_s: peer.tokens_per_s,
        torch: peer.peer,
        // Medians, and best steps (the machine is shared: the minimum is the steadier figure).
        ratio_vs_torch: tokensPerS / (peer.tokens_per_s as number),
        ratio_vs_torch_min: (peer.min_ms as number) / times[0],
        // CPU time per token, both on two threads: the least load-dependent comparison.
        ratio_vs_torch_cpu: (peer.cpu_ms_per_step as number) / cpuMs,
      }
      : {}),
  };
}

const PEER = fileURLToPath(new URL("../../bench/peers/torch_block_finetune.py", import.meta.url));

/** The PyTorch peer's JSON line, or null (with a message) when /usr/bin/python3 lacks torch. */
export async function torchBlockFinetune(
  modelDir: string,
  T: number,
  steps: number,
  d: number,
  n: number,
  B = 1,
): Promise<Record<string, unknown> | null> {
  // Debian's OpenBLAS as it tunes itself: no core type or cache size forced.
  const env = Deno.env.toObject();
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const run = (args: string[]) =>
    new Deno.Command("/usr/bin/python3", {
      args,
      env,
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    }).output();
  try {
    const probe = await run(["-c", "import torch"]);
    if (probe.code !== 0) throw new Error("no torch");
  } catch {
    console.error(
      "bench: /usr/bin/python3 has no torch (apt install python3-torch): torch peer skipped",
    );
    return null;
  }
  const out = await run([PEER, modelDir, `${T}`, `${steps}`, `${d}`, `${n}`, `${B}`]);
  const dec = new TextDecoder();
  if (out.code !== 0) {
    console.error(`bench: torch peer failed: ${dec.decode(out.stderr).trim()}`);
    return null;
  }
  return JSON.parse(dec.decode(out.stdout).trim());
}
