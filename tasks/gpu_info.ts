// Prints the WebGPU adapter and its limits; exits 1 when there is none.
import { getGpu } from "../src/gpu/device.ts";
import { runMain } from "../src/cli/main.ts";

await runMain(async () => {
  const gpu = await getGpu();
  console.log(JSON.stringify({ adapter: gpu.adapterName, f16: gpu.hasF16, ...gpu.limits }));
});
