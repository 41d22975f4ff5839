// The WGSL template expander: the generator of every unrolled shader (kmeans.wgsl,
// codebook_linear.wgsl, matvec.wgsl). Shaders stay readable templates in shaders/; the host
// expands them per specialisation, and the expanded text is cached by its variables.

/** Template variables: integers, or strings substituted as text. */
export type WgslVars = Record<string, number | string>;

/**
 * Expands a WGSL template. `${EXPR}` becomes the value of EXPR; lines between `//#for v < EXPR`
 * and `//#end` repeat for v = 0 .. EXPR - 1; lines between `//#if EXPR` and `//#end` stay only
 * when EXPR is non-zero (both nest). EXPR is integer arithmetic over the variables: + - * /
 * (floor) %, comparisons, && || !, parentheses; a string variable may only stand alone.
 * Comment lines (starting with `//`) are copied unexpanded.
 */
export function expandWgsl(src: string, vars: WgslVars, name = "template"): string {
  const lines = src.split("\n");
  const out: string[] = [];
  const emit = (from: number, to: number, env: WgslVars): void => {
    for (let i = from; i < to; i++) {
      const t = lines[i].trim();
      const f = /^\/\/#for (\w+) < (.+)$/.exec(t);
      const c = /^\/\/#if (.+)$/.exec(t);
      if (f || c) {
        let depth = 1, end = i + 1;
        for (; end < to; end++) {
          const u = lines[end].trim();
          if (u.startsWith("//#for ") || u.startsWith("//#if ")) depth++;
          else if (u === "//#end" && --depth === 0) break;
        }
        if (depth !== 0) throw new Error(`${name}:${i + 1}: ${t} without //#end`);
        if (f) {
          const limit = evalInt(f[2], env, `${name}:${i + 1}`);
          for (let v = 0; v < limit; v++) emit(i + 1, end, { ...env, [f[1]]: v });
        } else if (evalInt(c![1], env, `${name}:${i + 1}`) !== 0) {
          emit(i + 1, end, env);
        }
        i = end;
        continue;
      }
      if (t === "//#end") throw new Error(`${name}:${i + 1}: //#end without //#for or //#if`);
      if (t.startsWith("//")) {
        out.push(lines[i]); // comments are not expanded
        continue;
      }
      out.push(lines[i].replace(/\$\{([^}]+)\}/g, (_, e: string) => {
        const s = env[e.trim()];
        return typeof s === "string" ? s : `${evalInt(e, env, `${name}:${i + 1}`)}`;
      }));
    }
  };
  emit(0, lines.length, vars);
  return out.join("\n");
}

const LEVELS = [["||"], ["&&"], ["==", "!=", "<", ">", "<=", ">="], ["+", "-"], ["*", "/", "%"]];

/** Evaluates an integer template expression (see expandWgsl). */
function evalInt(expr: string, env: WgslVars, where: string): number {
  const toks = expr.match(/\d+|\w+|&&|\|\||[=!<>]=|[-+*/%()<>!]/g) ?? [];
  const fail = (): never => {
    throw new Error(`${where}: bad template expression "${expr}"`);
  };
  if (toks.join("") !== expr.replace(/\s+/g, "")) fail();
  let k = 0;
  const apply = (op: string, v: number, w: number): number => {
    switch (op) {
      case "||":
        return v || w ? 1 : 0;
      case "&&":
        return v && w ? 1 : 0;
      case "==":
        return +(v === w);
      case "!=":
        return +(v !== w);
      case "<":
        return +(v < w);
      case ">":
        return +(v > w);
      case "<=":
        return +(v <= w);
      case ">=":
        return +(v >= w);
      case "+":
        return v + w;
      case "-":
        return v - w;
      case "*":
        return v * w;
      case "/":
        return w === 0 ? fail() : Math.floor(v / w);
      default:
        return w === 0 ? fail() : v - Math.floor(v / w) * w;
    }
  };
  const binary = (level: number): number => {
    if (level === LEVELS.length) return unary();
    let v = binary(level + 1);
    while (k < toks.length && LEVELS[level].includes(toks[k])) {
      const op = toks[k++];
      v = apply(op, v, binary(level + 1));
    }
    return v;
  };
  const unary = (): number => {
    const t = toks[k++];
    if (t === "-") return -unary();
    if (t === "!") return unary() ? 0 : 1;
    if (t === "(") {
      const v = binary(0);
      if (toks[k++] !== ")") fail();
      return v;
    }
    if (t !== undefined && /^\d+$/.test(t)) return Number(t);
    const v = t === undefined ? undefined : env[t];
    return typeof v === "number" ? v : fail();
  };
  const v = binary(0);
  if (k !== toks.length) fail();
  return v;
}

const modules = new Map<string, { name: string; code: string }>();

/** The expanded shader for these variables (cached), named by them for the pipeline cache. */
export function templateModule(
  family: string,
  src: string,
  vars: WgslVars,
): { name: string; code: string } {
  const key = `${family}[${Object.entries(vars).map(([k, v]) => `${k}=${v}`).join(",")}]`;
  let m = modules.get(key);
  if (!m) {
    m = { name: key, code: expandWgsl(src, vars, `${family}.wgsl`) };
    modules.set(key, m);
  }
  return m;
}
