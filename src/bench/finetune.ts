// Finetuning step throughput: forward with kept activations, MSE gradient, backward to the
// codebooks, AdamW and re-decode, for one block of a real model on random codes.
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
): Promise<Record<string, unknown>> {
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
  );
  const x = await Tensor.from(gpu, new Float32Array(cfg.hidden * T).map(() => rng.normal()), [
    cfg.hidden,
    T,
  ], "x");
  const want = await Tensor.from(gpu, new Float32Array(cfg.hidden * T).map(() => rng.normal()), [
    cfg.hidden,
    T,
  ], "want");
  const opt = { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1 };
  const step = () => {
    const y = s.forward(x, true);
    mseGrad(gpu, y.all, want.all, s.dy.all, s.sq.all, cfg.hidden, T, 2 / (cfg.hidden * T));
    s.backward();
    s.update(opt);
  };
  step();
  await gpu.sync();
  const times: number[] = [];
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    step();
    await gpu.sync();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  const median = times[times.length >> 1];
  x.release();
  want.release();
  s.release();
  return {
    name: "finetune_step",
    model: modelDir.split("/").pop(),
    shapes: `1 block, ${T} tokens, d=${d} n=${n}`,
    median_ms: median,
    tokens_per_s: T / (median / 1000),
  };
}
