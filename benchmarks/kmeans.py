"""k-means: ours (20 Lloyd iterations from k-means++ seeds; torch on GPU, faiss on CPU) against sklearn
MiniBatchKMeans with fairseq's simple_kmeans settings, on the same frames; time and inertia.

    python benchmarks/kmeans.py --device cuda --frames 1000000 --dim 768 -k 500     # the issue's target
    python benchmarks/kmeans.py --device cpu --frames 100000 --dim 768 -k 100       # CPU run
    python benchmarks/kmeans.py --streamed --frames 500000,2000000 -k 100 --iters 5  # feature cache on disk
    python benchmarks/kmeans.py --streamed --device cuda --frames 1000000,10000000 -k 500 --iters 20
    python benchmarks/kmeans.py --streamed --frames 200000 -k 100 --iters 5 --minibatch-frames 10000 \
        --minibatch-passes 1                                           # + mini-batch k-means on the cache

--streamed: frames are written to a feature cache (fp16 chunks) piece by piece, and `StreamedKMeans` runs
in a fresh process per frame count, so its peak RSS is its own; the in-memory k-means on the same fp16
frames runs (in its own process) for the smallest count, and its inertia is the reference. With
--minibatch-frames, streamed mini-batch k-means (--minibatch-passes passes) runs on each cache too, and the
section written is its own ("kmeans-streamed-minibatch-DEVICE").
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


def write_cache(folder: Path, n: int, dim: int, piece: int = 100_000) -> None:
    """`n` mixture frames into a FeatureCache, generated `piece` frames at a time (never all in memory):
    the mixture's components are fixed by seed 0, each piece's draws by its own seed."""
    from speechtok.tokenizers.kmeans_stream import FeatureCache

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(2000, dim, generator=g)
    scales = 0.2 + 0.6 * torch.rand(2000, 1, generator=g)
    cache = FeatureCache(folder)
    for i, lo in enumerate(range(0, n, piece)):
        gi = torch.Generator().manual_seed(1000 + i)
        which = torch.randint(0, 2000, (min(piece, n - lo),), generator=gi)
        cache.write((centers[which] + scales[which] * torch.randn(len(which), dim, generator=gi)).numpy())
    cache.close()


def child(mode: str, folder: str, k: int, iters: int, device: str, batch: int | None = None) -> None:
    """One measurement in this process: prints seconds, inertia and peak RSS (MiB) as JSON (mode
    "minibatch": `iters` passes of `batch`-frame steps)."""
    import json
    import resource

    from speechtok.tokenizers.kmeans import kmeans_torch
    from speechtok.tokenizers.kmeans_stream import FeatureCache, StreamedKMeans

    t0 = time.perf_counter()
    if mode == "streamed":
        result = StreamedKMeans(FeatureCache(folder), k, seed=0, device=device).fit(iters)
    elif mode == "minibatch":
        result = StreamedKMeans(FeatureCache(folder), k, seed=0, device=device, batch_frames=batch).fit(iters)
    else:
        x = torch.cat([torch.from_numpy(np.load(p)).float() for p in FeatureCache(folder).chunks()])
        result = kmeans_torch(x.to(device), k, iters=iters, seed=0)
    print(json.dumps({"seconds": time.perf_counter() - t0, "inertia": result.inertia,
                      "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def streamed(args) -> None:
    import json
    import subprocess
    import tempfile

    counts = [int(c) for c in str(args.frames).split(",")]
    rows = []
    for n in counts:
        with tempfile.TemporaryDirectory(dir=args.cache_root) as folder:
            write_cache(Path(folder), n, args.dim)
            modes = ["streamed", "memory"] if n == min(counts) else ["streamed"]
            modes += ["minibatch"] if args.minibatch_frames else []
            for mode in modes:
                iters = args.minibatch_passes if mode == "minibatch" else args.iters
                out = subprocess.run([sys.executable, __file__, "--child", mode, folder, "-k", str(args.k),
                                      "--iters", str(iters), "--device", args.device,
                                      "--batch", str(args.minibatch_frames or 0)],
                                     capture_output=True, text=True, check=True)
                rows.append((n, mode, json.loads(out.stdout.strip().splitlines()[-1])))
                print(rows[-1], flush=True)
    ref = next(r for n, m, r in rows if m == "memory")
    label = {"streamed": "streamed from the fp16 cache", "memory": "in memory (fp32 copy)",
             "minibatch": f"streamed mini-batch, {args.minibatch_frames or 0:,} frames a step, "
                          f"{args.minibatch_passes} pass(es)"}
    table = "\n".join(f"| {n:,} | {label[m]} | {r['seconds']:.1f} | {r['rss_mib']:,.0f} | "
                      f"{r['inertia']:.4f} | "
                      + (f"{(r['inertia'] / ref['inertia'] - 1) * 100:+.4f}% |" if n == min(counts) else
                         "(other data) |") for n, m, r in rows)
    what = " and mini-batch k-means" if args.minibatch_frames else ""
    flags = (f" --minibatch-frames {args.minibatch_frames} --minibatch-passes {args.minibatch_passes}"
             if args.minibatch_frames else "")
    body = (f"## k-means{what} streamed from a feature cache (issue #27)\n\n"
            f"Hardware: {hardware(torch.device(args.device))}, k-means on {args.device}. {args.dim}-dim "
            f"mixture frames stored as fp16 chunks of 65,536 frames; K={args.k}, k-means++ seeds on 64·K "
            f"frames + {args.iters} Lloyd iterations; each run in its own process (peak RSS = its "
            f"ru_maxrss). `python benchmarks/kmeans.py --streamed --frames {args.frames} -k {args.k} "
            f"--iters {args.iters}{flags}`.\n\n"
            f"| frames | k-means | seconds | peak RSS MiB | inertia | vs in-memory "
            f"|\n|---|---|---|---|---|---|\n{table}\n")
    print(body)
    if not args.no_write:
        key = "kmeans-streamed-minibatch" if args.minibatch_frames else "kmeans-streamed"
        write_section(f"{key}-{torch.device(args.device).type}", body)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        k, iters = int(sys.argv[sys.argv.index("-k") + 1]), int(sys.argv[sys.argv.index("--iters") + 1])
        return child(sys.argv[2], sys.argv[3], k, iters, sys.argv[sys.argv.index("--device") + 1],
                     int(sys.argv[sys.argv.index("--batch") + 1]) or None)
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--frames", default="1000000", help="a count, or counts separated by ',' with --streamed")
    ap.add_argument("--streamed", action="store_true", help="feature cache on disk: peak RSS and inertia")
    ap.add_argument("--cache-root", default=None, help="--streamed: where the temporary cache goes")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("-k", type=int, default=500)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--sklearn-n-init", type=int, default=20, help="fairseq's default is 20")
    ap.add_argument("--minibatch-frames", type=int, default=None,
                    help="--streamed: also mini-batch k-means with this many frames a step")
    ap.add_argument("--minibatch-passes", type=int, default=1, help="--streamed: mini-batch passes")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.streamed:
        return streamed(args)
    args.frames = int(args.frames)
    device = torch.device(args.device)
    xt = mixture(args.frames, args.dim, device=device)
    x = xt.cpu().numpy()
    ours_s, ours_inertia, backend = time_ours(xt, args.k, args.iters)
    mb_s, mb_inertia = time_sklearn(x, xt, args.k, args.sklearn_n_init)

    body = (f"## k-means (issue #2)\n\n"
            f"Hardware: {hardware(device)}. {args.frames:,} frames × {args.dim} dims, K={args.k} "
            f"(mixture of 2,000 Gaussians).\n\n"
            f"| method | seconds | inertia (mean sq. distance) |\n|---|---|---|\n"
            f"| sklearn MiniBatchKMeans, fairseq simple_kmeans settings (batch 10k, max_iter 100, n_init "
            f"{args.sklearn_n_init}, max_no_improvement 100) | {mb_s:.2f} | {mb_inertia:.4f} |\n"
            f"| speechtok `{backend}`, k-means++ seeds + {args.iters} Lloyd iterations | {ours_s:.2f} | "
            f"{ours_inertia:.4f} |\n\n"
            f"Speed-up: **{mb_s / ours_s:.1f}×**; inertia ratio ours / MiniBatchKMeans: "
            f"**{ours_inertia / mb_inertia:.4f}** "
            f"({'no worse' if ours_inertia <= mb_inertia else 'worse'}).\n")
    print(body)
    if not args.no_write:
        write_section(f"kmeans-{device.type}", body)


if __name__ == "__main__":
    main()
