// The model's chat template (tokenizer_config.json `chat_template`) rendered with
// @huggingface/jinja, as transformers' apply_chat_template does with add_generation_prompt.
import { Template } from "@huggingface/jinja";
import { UserError } from "../errors.ts";
import { ApiError } from "./errors.ts";

export interface Message {
  role: string;
  content?: string | { type: "text"; text: string }[] | null;
  name?: string | null;
}

function tokenText(v: unknown): string {
  if (typeof v === "string") return v;
  if (
    typeof v === "object" && v !== null && typeof (v as { content?: unknown }).content === "string"
  ) {
    return (v as { content: string }).content;
  }
  return "";
}

export class ChatTemplate {
  private constructor(
    private readonly template: Template,
    readonly bosToken: string,
    readonly eosToken: string,
  ) {}

  /** The folder's template, or null when tokenizer_config.json has none. */
  static async load(dir: string): Promise<ChatTemplate | null> {
    const path = `${dir}/tokenizer_config.json`;
    let cfg: Record<string, unknown>;
    try {
      cfg = JSON.parse(await Deno.readTextFile(path));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return null;
      throw new UserError(`${path}: ${(e as Error).message.split("\n")[0]}`);
    }
    let src = cfg.chat_template;
    if (Array.isArray(src)) {
      // [{name, template}]: the one named "default", else the first
      const pick = src.find((t) => t?.name === "default") ?? src[0];
      src = pick?.template;
    }
    if (src === undefined || src === null) return null;
    if (typeof src !== "string") throw new UserError(`${path}: chat_template is not a string`);
    let template: Template;
    try {
      template = new Template(src);
    } catch (e) {
      throw new UserError(`${path}: chat_template does not parse: ${(e as Error).message}`);
    }
    return new ChatTemplate(template, tokenText(cfg.bos_token), tokenText(cfg.eos_token));
  }

  /** The prompt text for `messages`, ending with the assistant's turn opened. */
  render(messages: Message[]): string {
    const msgs = messages.map((m) => ({
      role: m.role,
      content: typeof m.content === "string"
        ? m.content
        : (m.content ?? []).map((p) => p.text).join(""),
      ...(m.name ? { name: m.name } : {}),
    }));
    try {
      return this.template.render({
        messages: msgs,
        bos_token: this.bosToken,
        eos_token: this.eosToken,
        add_generation_prompt: true,
      });
    } catch (e) {
      throw new ApiError(
        400,
        `messages: the chat template failed: ${(e as Error).message}`,
        "messages",
        "chat_template_error",
      );
    }
  }
}
