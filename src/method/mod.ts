// The registry of compression methods, by the name --method takes.
import { cluscomp } from "./cluscomp.ts";
import { gptq } from "./gptq.ts";
import type { Method } from "./method.ts";
import { rtn } from "./rtn.ts";

export type { Method, MethodPlan, MethodSettings } from "./method.ts";

export const methods: Record<Method["name"], Method> = { cluscomp, rtn, gptq };
