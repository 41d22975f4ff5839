// Plain TypeScript references for shaders/elementwise.wgsl.

export function addRef(x: Float32Array, y: Float32Array): Float32Array {
  return x.map((v, i) => v + y[i]);
}

export function siluMulRef(x: Float32Array, y: Float32Array): Float32Array {
  return x.map((a, i) => (a / (1 + Math.exp(-a))) * y[i]);
}
