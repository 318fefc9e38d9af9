"""k-means: ours (20 Lloyd iterations from k-means++ seeds; torch on GPU, faiss on CPU) against sklearn
MiniBatchKMeans with fairseq's simple_kmeans settings, on the same frames; time and inertia.

    python benchmarks/kmeans.py --device cuda --frames 1000000 --dim 768 -k 500     # the issue's target
    python benchmarks/kmeans.py --device cpu --frames 100000 --dim 768 -k 100       # CPU run

Frames are drawn from a mixture of 2,000 anisotropic Gaussians in `dim` dimensions (a stand-in for
HuBERT features, which need pretrained weights). Inertia = mean squared distance to the nearest centroid,
computed by the same exact function for both."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import hardware, write_section  # noqa: E402

from speechtok.tokenizers.kmeans import assign, train_kmeans  # noqa: E402


def mixture(n: int, dim: int, seed: int = 0, components: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.0, (components, dim)).astype(np.float32)
    scales = rng.uniform(0.2, 0.8, (components, 1)).astype(np.float32)
    which = rng.integers(0, components, n)
    return centers[which] + scales[which] * rng.standard_normal((n, dim), dtype=np.float32)


def inertia(x: torch.Tensor, centroids: np.ndarray) -> float:
    return float(assign(x, torch.from_numpy(centroids).to(x.device))[1].double().mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("-k", type=int, default=500)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--sklearn-n-init", type=int, default=20, help="fairseq's default is 20")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    x = mixture(args.frames, args.dim)
    xt = torch.from_numpy(x).to(device)

    train_kmeans(xt[: 20 * args.k], args.k, iters=2, device=str(device))  # warm-up (CUDA context, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    ours = train_kmeans(xt, args.k, iters=args.iters, seed=0, device=str(device))
    ours_s = time.perf_counter() - t0
    ours_inertia = inertia(xt, ours.centroids)

    from sklearn.cluster import MiniBatchKMeans

    t0 = time.perf_counter()
    mb = MiniBatchKMeans(n_clusters=args.k, init="k-means++", max_iter=100, batch_size=10000, tol=0.0,
                         max_no_improvement=100, n_init=args.sklearn_n_init, reassignment_ratio=0.0,
                         compute_labels=False, random_state=0).fit(x)
    mb_s = time.perf_counter() - t0
    mb_inertia = inertia(xt, mb.cluster_centers_.astype(np.float32))

    body = (f"## k-means (issue #2)\n\n"
            f"Hardware: {hardware(device)}. {args.frames:,} frames × {args.dim} dims, K={args.k} "
            f"(mixture of 2,000 Gaussians).\n\n"
            f"| method | seconds | inertia (mean sq. distance) |\n|---|---|---|\n"
            f"| sklearn MiniBatchKMeans, fairseq simple_kmeans settings (batch 10k, max_iter 100, n_init {args.sklearn_n_init}, max_no_improvement 100) | {mb_s:.2f} | {mb_inertia:.4f} |\n"
            f"| speechtok `{ours.backend}`, k-means++ seeds + {args.iters} Lloyd iterations | {ours_s:.2f} | {ours_inertia:.4f} |\n\n"
            f"Speed-up: **{mb_s / ours_s:.1f}×**; inertia ratio ours / MiniBatchKMeans: **{ours_inertia / mb_inertia:.4f}** "
            f"({'no worse' if ours_inertia <= mb_inertia else 'worse'}).\n")
    print(body)
    if not args.no_write:
        write_section(f"kmeans-{device.type}", body)


if __name__ == "__main__":
    main()
