// Request bodies of the OpenAI-style endpoints, checked with zod. Unknown fields are ignored;
// a bad field is a 400 naming it.
import { z } from "zod";
import { ApiError } from "./errors.ts";

const stop = z.union([z.string(), z.array(z.string()).max(4)], {
  errorMap: () => ({ message: "must be a string or an array of at most 4 strings" }),
}).nullish();

/** The sampling fields both endpoints share. */
const common = {
  model: z.string().nullish(),
  max_tokens: z.number().int().min(1).nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  stop,
  seed: z.number().int().nullish(),
  n: z.literal(1, { errorMap: () => ({ message: "only n = 1 is supported" }) }).nullish(),
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().nullish() }).nullish(),
  user: z.string().nullish(),
};

export const CompletionRequest = z.object({
  ...common,
  prompt: z.union([
    z.string(),
    z.array(z.string()).length(1, "only one prompt per request is supported"),
    z.array(z.number().int().min(0)).min(1),
  ], {
    errorMap: (issue, ctx) =>
      issue.code === "invalid_union"
        ? { message: "must be a string, an array of one string, or an array of token ids" }
        : { message: ctx.defaultError },
  }),
});
export type CompletionRequest = z.infer<typeof CompletionRequest>;

const textPart = z.object({ type: z.literal("text"), text: z.string() });

export const ChatMessage = z.object({
  role: z.enum(["system", "developer", "user", "assistant", "tool"]),
  content: z.union([z.string(), z.array(textPart)]).nullish(),
  name: z.string().nullish(),
});

export const ChatRequest = z.object({
  ...common,
  max_completion_tokens: z.number().int().min(1).nullish(),
  messages: z.array(ChatMessage).min(1),
});
export type ChatRequest = z.infer<typeof ChatRequest>;

/** Parses `body` with `schema`, or throws a 400 naming the first bad field. */
export function parseBody<T>(schema: z.ZodType<T>, body: unknown): T {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new ApiError(400, "the request body must be a JSON object", null, "invalid_body");
  }
  const r = schema.safeParse(body);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  const param = issue.path.join(".") || null;
  // A field that is absent: say so, whatever the schema's message.
  let v: unknown = body;
  for (const k of issue.path) v = (v as Record<string | number, unknown> | undefined)?.[k];
  const missing = param !== null && v === undefined;
  throw new ApiError(
    400,
    `${param ?? "body"}: ${missing ? "is required" : issue.message}`,
    param,
    missing ? "missing_required_parameter" : "invalid_value",
  );
}
