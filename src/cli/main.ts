// Runs a command: user errors become one line on stderr and exit code 1; no stack traces
// unless CLUSCOMP_DEBUG is set.
import { UserError } from "../errors.ts";
import { StopRun } from "../runner/control.ts";

export const EXIT_ERROR = 1;
export const EXIT_INTERNAL = 3;

export async function runMain(fn: (argv: string[]) => Promise<number | void>): Promise<never> {
  let code = 0;
  try {
    code = (await fn(Deno.args)) ?? 0;
  } catch (e) {
    const debug = Deno.env.get("CLUSCOMP_DEBUG");
    if (e instanceof StopRun) {
      console.error(`stopped: ${e.message}`);
      code = e.code;
    } else if (e instanceof UserError) {
      console.error(`error: ${e.message}`);
      code = EXIT_ERROR;
    } else if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.PermissionDenied) {
      console.error(`error: ${(e as Error).message.split("\n")[0]}`);
      code = EXIT_ERROR;
    } else {
      const msg = e instanceof Error ? e.message.split("\n")[0] : String(e);
      console.error(`internal error: ${msg} (set CLUSCOMP_DEBUG=1 for details)`);
      code = EXIT_INTERNAL;
    }
    if (debug && e instanceof Error) console.error(e.stack);
  }
  Deno.exit(code);
}
