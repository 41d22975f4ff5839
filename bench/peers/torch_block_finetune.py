#!/usr/bin/env python3
"""PyTorch eager peer of cluscomp's block finetuning step (src/bench/finetune.ts).

One Llama decoder block at a model's shapes (RMSNorm with unit weights, q/k/v/o with rotate_half
RoPE and GQA, causal attention, SiLU-gated MLP) whose seven linears are ClusComp codebooks:
W^T [in, out] = C[codes] gathered inside the graph (C [n, d], codes [in, out / d]), so the
gradient reaches the codebooks. Per step, like benchFinetuneStep: forward of B windows of T
random tokens (attention within each window), MSE to a random target, backward, AdamW (lr 1e-4, betas 0.9/0.999, eps 1e-8,
weight decay 0.1) on the seven codebooks. Prints one JSON line: median and min step
milliseconds, process CPU milliseconds per step, and tokens/s.

Usage: /usr/bin/python3 torch_block_finetune.py MODEL_DIR T STEPS [D N [B]]
Run with Debian's python3-torch and libopenblas0-pthread; OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE unset; two threads. A peer for the benchmark only: cluscomp never depends on it.
"""
import json
import math
import sys
import time

import torch


def main():
    model_dir, T, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    d = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    n = int(sys.argv[5]) if len(sys.argv) > 5 else 256
    B = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    torch.set_num_threads(2)
    torch.manual_seed(7)
    with open(f"{model_dir}/config.json") as f:
        cfg = json.load(f)
    H, I = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim") or H // heads
    eps = cfg.get("rms_norm_eps", 1e-5)
    theta = cfg.get("rope_theta", 10000.0)
    shapes = {
        "q": (H, heads * hd), "k": (H, kv * hd), "v": (H, kv * hd), "o": (heads * hd, H),
        "gate": (H, I), "up": (H, I), "down": (I, H),
    }
    books, codes = {}, {}
    for name, (i, o) in shapes.items():
        assert o % d == 0, f"{name}: out {o} not a multiple of d {d}"
        books[name] = ((torch.rand(n, d) - 0.5) * 0.1).requires_grad_()
        codes[name] = torch.randint(0, n, (i, o // d))
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1).float()  # [T, hd]
    sin = torch.cat([ang.sin(), ang.sin()], -1).float()
    mask = torch.full((T, T), float("-inf")).triu(1)
    x = torch.randn(B, T, H)
    want = torch.randn(B, T, H)
    opt = torch.optim.AdamW(list(books.values()), lr=1e-4, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.1)

    def w(name):
        i, o = shapes[name]
        return books[name][codes[name]].reshape(i, o)  # W^T [in, out]

    def rms(t):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps)

    def rot(t):  # [B, heads, T, hd]
        a, b = t[..., : hd // 2], t[..., hd // 2:]
        return t * cos + torch.cat([-b, a], -1) * sin

    def block(x):
        h = rms(x)
        q = (h @ w("q")).view(B, T, heads, hd).transpose(1, 2)
        k = (h @ w("k")).view(B, T, kv, hd).transpose(1, 2)
        v = (h @ w("v")).view(B, T, kv, hd).transpose(1, 2)
        q, k = rot(q), rot(k)
        k = k.repeat_interleave(heads // kv, 1)
        v = v.repeat_interleave(heads // kv, 1)
        p = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(hd) + mask, -1)
        o = (p @ v).transpose(1, 2).reshape(B, T, heads * hd)
        x2 = x + o @ w("o")
        h2 = rms(x2)
        return x2 + (torch.nn.functional.silu(h2 @ w("gate")) * (h2 @ w("up"))) @ w("down")

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(block(x), want)
        loss.backward()
        opt.step()

    step()
    times = []
    cpu0 = time.process_time()
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1000)
    cpu_ms = (time.process_time() - cpu0) * 1000 / steps
    times.sort()
    med = times[len(times) // 2]
    print(json.dumps({
        "peer": f"torch {torch.__version__} eager, {torch.get_num_threads()} threads",
        "windows": B,
        "median_ms": med,
        "min_ms": times[0],
        "cpu_ms_per_step": cpu_ms,
        "tokens_per_s": B * T / (med / 1000),
    }))


main()
