"""k-means: ours (20 Lloyd iterations from k-means++ seeds; torch on GPU, faiss on CPU) against sklearn
MiniBatchKMeans with fairseq's simple_kmeans settings, on the same frames; time and inertia.

    python benchmarks/kmeans.py --device cuda --frames 1000000 --dim 768 -k 500     # the issue's target
    python benchmarks/kmeans.py --device cpu --frames 100000 --dim 768 -k 100       # CPU run

Frames are drawn from a mixture of 2,000 Gaussians of random scale in `dim` dimensions (a stand-in for
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


def mixture(n: int, dim: int, seed: int = 0, components: int = 2000,
            device: str | torch.device = "cpu") -> torch.Tensor:
    """[n, dim] float32 frames from `components` isotropic Gaussians of random scale, drawn on `device`."""
    g = torch.Generator(device).manual_seed(seed)
    centers = torch.randn(components, dim, generator=g, device=device)
    scales = 0.2 + 0.6 * torch.rand(components, 1, generator=g, device=device)
    which = torch.randint(0, components, (n,), generator=g, device=device)
    return centers[which] + scales[which] * torch.randn(n, dim, generator=g, device=device)


def inertia(x: torch.Tensor, centroids: np.ndarray) -> float:
    return float(assign(x, torch.from_numpy(centroids).to(x.device))[1].double().mean())


def time_ours(xt: torch.Tensor, k: int, iters: int, backend: str = "auto") -> tuple[float, float, str]:
    """(seconds, inertia, backend) of `train_kmeans` on `xt`'s device, after a small warm-up run."""
    device = str(xt.device)
    train_kmeans(xt[: 20 * k], k, iters=2, device=device, backend=backend)  # warm-up (CUDA context, kernels)
    if xt.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    ours = train_kmeans(xt, k, iters=iters, seed=0, device=device, backend=backend)
    seconds = time.perf_counter() - t0
    return seconds, inertia(xt, ours.centroids), ours.backend


def time_sklearn(x: np.ndarray, xt: torch.Tensor, k: int, n_init: int) -> tuple[float, float]:
    """(seconds, inertia) of MiniBatchKMeans with fairseq simple_kmeans' settings."""
    from sklearn.cluster import MiniBatchKMeans

    t0 = time.perf_counter()
    mb = MiniBatchKMeans(n_clusters=k, init="k-means++", max_iter=100, batch_size=10000, tol=0.0,
                         max_no_improvement=100, n_init=n_init, reassignment_ratio=0.0,
                         compute_labels=False, random_state=0).fit(x)
    return time.perf_counter() - t0, inertia(xt, mb.cluster_centers_.astype(np.float32))


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
    xt = mixture(args.frames, args.dim, device=device)
    x = xt.cpu().numpy()
    ours_s, ours_inertia, backend = time_ours(xt, args.k, args.iters)
    mb_s, mb_inertia = time_sklearn(x, xt, args.k, args.sklearn_n_init)

    body = (f"## k-means (issue #2)\n\n"
            f"Hardware: {hardware(device)}. {args.frames:,} frames × {args.dim} dims, K={args.k} "
            f"(mixture of 2,000 Gaussians).\n\n"
            f"| method | seconds | inertia (mean sq. distance) |\n|---|---|---|\n"
            f"| sklearn MiniBatchKMeans, fairseq simple_kmeans settings (batch 10k, max_iter 100, n_init {args.sklearn_n_init}, max_no_improvement 100) | {mb_s:.2f} | {mb_inertia:.4f} |\n"
            f"| speechtok `{backend}`, k-means++ seeds + {args.iters} Lloyd iterations | {ours_s:.2f} | {ours_inertia:.4f} |\n\n"
            f"Speed-up: **{mb_s / ours_s:.1f}×**; inertia ratio ours / MiniBatchKMeans: **{ours_inertia / mb_inertia:.4f}** "
            f"({'no worse' if ours_inertia <= mb_inertia else 'worse'}).\n")
    print(body)
    if not args.no_write:
        write_section(f"kmeans-{device.type}", body)


if __name__ == "__main__":
    main()
