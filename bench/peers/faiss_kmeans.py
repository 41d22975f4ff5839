#!/usr/bin/python3
"""Peer benchmark: faiss k-means (IndexFlatL2, exact brute-force assignment) on the project's data.

Run by src/bench/kmeans.ts beside the project's own k-means, with Debian's /usr/bin/python3 and
its python3-faiss (never a dependency: the bench skips the peer when faiss is missing).

Usage: faiss_kmeans.py DATA N D K ITERS [SEED]
DATA is raw little-endian float32 [N, D]. Prints one JSON line: seconds (train() wall time for
ITERS Lloyd iterations, initialisation included), per_iteration, objective (faiss's final
sum of squared distances), threads, faiss version.
"""
import json
import os
import sys
import time

for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(var, None)

import faiss  # noqa: E402
import numpy as np  # noqa: E402


def main() -> None:
    path, n_points, dim, k, iters = sys.argv[1], *map(int, sys.argv[2:6])
    seed = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    x = np.fromfile(path, dtype=np.float32, count=n_points * dim).reshape(n_points, dim)
    km = faiss.Kmeans(
        dim,
        k,
        niter=iters,
        seed=seed,
        verbose=False,
        spherical=False,
        # Use every point (faiss subsamples to 256 per centroid by default).
        max_points_per_centroid=max(256, (n_points + k - 1) // k),
    )
    t0 = time.perf_counter()
    km.train(x)
    seconds = time.perf_counter() - t0
    print(json.dumps({
        "peer": "faiss",
        "version": faiss.__version__,
        "index": "IndexFlatL2",
        "N": n_points,
        "d": dim,
        "n": k,
        "iters": iters,
        "seconds": seconds,
        "per_iteration": seconds / max(1, iters),
        "objective": float(km.obj[-1]) if len(km.obj) else None,
        "threads": faiss.omp_get_max_threads(),
    }))


if __name__ == "__main__":
    main()
