export async function sha256Hex(b: Uint8Array): Promise<string> {
  const h = new Uint8Array(await crypto.subtle.digest("SHA-256", b));
  return [...h].map((x) => x.toString(16).padStart(2, "0")).join("");
}
