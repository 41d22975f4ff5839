#!/usr/bin/env python3
"""faiss k-means over every linear of a Llama safetensors model, as cluscomp clusters it.

Each matrix W [out, in] becomes ClusComp's vectors: W^T rows cut into d consecutive output
weights (each row zero-padded to a multiple of d). faiss.Kmeans (IndexFlatL2, `niter`
iterations, one run, no sub-sampling) clusters them into n centroids. Prints one JSON line:
seconds of clustering (matrices loaded beforehand), and of the whole process.

Usage: /usr/bin/python3 faiss_model.py MODEL_DIR D N ITERS
Run with Debian's python3-faiss (1.7.3) and libopenblas0-pthread; OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE unset. A peer for the benchmark only: cluscomp never depends on it.
"""
import glob
import json
import os
import re
import struct
import sys
import time

T0 = time.time()
import numpy as np  # noqa: E402
import faiss  # noqa: E402

LINEAR = re.compile(r"model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$")


def tensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        for name, meta in header.items():
            if name == "__metadata__" or not LINEAR.match(name):
                continue
            a, b = meta["data_offsets"]
            f.seek(base + a)
            raw = f.read(b - a)
            dt = meta["dtype"]
            if dt == "F32":
                w = np.frombuffer(raw, dtype=np.float32)
            elif dt == "BF16":
                w = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
            elif dt == "F16":
                w = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
            else:
                raise SystemExit(f"{name}: dtype {dt} not handled")
            yield name, w.reshape(meta["shape"])


def vectors(w, d):
    out, inn = w.shape
    cols = -(-out // d)
    wt = np.zeros((inn, cols * d), dtype=np.float32)
    wt[:, :out] = w.T
    return np.ascontiguousarray(wt.reshape(inn * cols, d))


def main():
    model, d, n, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    mats = []
    for path in sorted(glob.glob(os.path.join(model, "*.safetensors"))):
        for name, w in tensors(path):
            mats.append((name, vectors(w, d)))
    t1 = time.time()
    objective = 0.0
    for _, x in mats:
        km = faiss.Kmeans(d, n, niter=iters, seed=0, max_points_per_centroid=1 << 30,
                          verbose=False)
        km.train(x)
        objective += float(km.obj[-1])
    t2 = time.time()
    print(json.dumps({
        "peer": "faiss",
        "faiss": faiss.__version__,
        "matrices": len(mats),
        "vectors": int(sum(x.shape[0] for _, x in mats)),
        "d": d, "n": n, "iters": iters,
        "cluster_s": t2 - t1,
        "process_s": t2 - T0,
        "objective": objective,
        "threads": faiss.omp_get_max_threads(),
    }))


main()
