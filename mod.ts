/**
 * cluscomp: ClusComp compression of Llama-family models on WebGPU.
 *
 * The stages as library calls; the commands in tasks/ are thin wrappers around them.
 * @module
 */
export { UserError } from "./src/errors.ts";
export { getGpu, Gpu } from "./src/gpu/device.ts";
export { Tensor } from "./src/gpu/tensor.ts";
export { loadConfig, type ModelConfig, parseConfig } from "./src/io/config.ts";
export { SafetensorsIndex, writeSafetensors } from "./src/io/safetensors.ts";
export { Tokenizer } from "./src/io/tokenizer.ts";
export { gptqWindows, readText } from "./src/io/text.ts";
export { openModel } from "./src/format/open.ts";
export { LlamaModel } from "./src/model/model.ts";
export {
  generate,
  type GenerateOptions,
  type GenerateResult,
  Runner,
  type RunnerOptions,
} from "./src/model/runner.ts";
export { type SampleSettings, sampleToken } from "./src/model/sample.ts";
export { StopFilter, TextStream } from "./src/io/detok.ts";
export {
  type GeneratedText,
  type GenerateTextOptions,
  LoadedModel,
  type LoadOptions,
} from "./src/pipeline/session.ts";
export { type EvalResult, type EvalSettings, evaluatePerplexity } from "./src/eval/perplexity.ts";
export { kmeans } from "./src/cluster/kmeans.ts";
export { type ClusterSettings, type MatrixPlan, planMatrices } from "./src/cluster/plan.ts";
export { compress, type CompressResult, type CompressSettings } from "./src/pipeline/compress.ts";
export {
  finetuneModel,
  type FinetuneModelResult,
  type FinetuneModelSettings,
} from "./src/pipeline/train.ts";
export {
  CodebookTrainer,
  type CodebookTrainOptions,
  type TrainWindow,
} from "./src/train/codebook_trainer.ts";
export { loadTrainData, splitHeldOut } from "./src/train/data.ts";
export { learningRate } from "./src/train/schedule.ts";
export { teacherText, teacherTopK } from "./src/train/teacher.ts";
export { planMemory } from "./src/pipeline/memplan.ts";
export { StageRunner, type Unit } from "./src/runner/stage.ts";
export { RunControl } from "./src/runner/control.ts";
