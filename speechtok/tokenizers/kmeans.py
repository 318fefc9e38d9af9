"""k-means for semantic units: Lloyd iterations in PyTorch (GPU or CPU) or faiss (GPU build when
installed, else CPU), k-means++ seeding, and nearest-centroid assignment."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from speechtok.torch_files import load_weights


@dataclass
class KMeansResult:
    centroids: np.ndarray  # [k, dim] float32
    inertia: float  # mean squared distance of a frame to its centroid
    iterations: int
    backend: str
    seconds: float


def assign(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 1 << 16,
           c_sqnorm: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each row of `x` [N, D] → (labels int64 [N], squared distances [N]).
    Computed as ‖x‖² − 2x·c + ‖c‖², in fp32, in chunks of rows."""
    c = centroids.float()
    cn = (c * c).sum(1) if c_sqnorm is None else c_sqnorm
    labels = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    dists = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for i in range(0, x.shape[0], chunk):
        xb = x[i:i + chunk].float()
        d = torch.addmm(cn[None, :], xb, c.T, alpha=-2.0)
        best, idx = d.min(1)
        labels[i:i + chunk] = idx
        dists[i:i + chunk] = torch.clamp(best + (xb * xb).sum(1), min=0)
    return labels, dists


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding (as sklearn): at each step draw 2 + ln(k) candidates by D² sampling and keep
    the one that lowers the total squared distance most."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=generator))
    centers = [x[first]]
    x_sq = (x * x).sum(1)
    d2 = torch.clamp(x_sq - 2 * x @ x[first] + x_sq[first], min=0)
    for _ in range(1, k):
        total = float(d2.sum())
        probs = (d2 / total).cpu().double() if total > 0 else torch.full((n,), 1.0 / n, dtype=torch.float64)
        cand = torch.multinomial(probs, trials, replacement=True, generator=generator).to(x.device)
        cand_d2 = torch.clamp(x_sq[None] - 2 * x[cand] @ x.T + x_sq[cand, None], min=0)  # [trials, n]
        best_pot = torch.minimum(cand_d2, d2[None]).sum(1)
        best = int(best_pot.argmin())
        centers.append(x[cand[best]])
        d2 = torch.minimum(d2, cand_d2[best])
    return torch.stack(centers)


def initial_centroids(x: torch.Tensor, k: int, seed: int, init_sample: int = 64) -> torch.Tensor:
    """k-means++ on a seeded sample of `init_sample`·k rows (both backends start from it)."""
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least k={k} frames, got {n}")
    g = torch.Generator().manual_seed(seed)
    sample = torch.randperm(n, generator=g)[: min(n, init_sample * k)].to(x.device)
    return kmeans_plus_plus(x[sample].float(), k, g)


def kmeans_torch(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> KMeansResult:
    """Lloyd's algorithm on `x`'s device from k-means++ seeds. An empty cluster is re-seeded with the
    frame currently farthest from its centroid."""
    t0 = time.perf_counter()
    x = x.float().contiguous()
    c = initial_centroids(x, k, seed)
    for _ in range(iters):
        labels, d = assign(x, c)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).float()
        empty = torch.nonzero(counts == 0).flatten()
        c = sums / torch.clamp(counts, min=1)[:, None]
        if len(empty):
            far = torch.topk(d, len(empty)).indices
            c[empty] = x[far]
    labels, d = assign(x, c)
    if x.is_cuda:
        torch.cuda.synchronize()
    return KMeansResult(c.cpu().numpy(), float(d.double().mean()), iters,
                        f"torch-{x.device.type}", time.perf_counter() - t0)


def faiss_available() -> tuple[bool, bool]:
    """(faiss importable, faiss has GPUs)."""
    try:
        import faiss
    except ImportError:
        return False, False
    return True, bool(getattr(faiss, "get_num_gpus", lambda: 0)())


def kmeans_faiss(x: np.ndarray, k: int, iters: int = 20, seed: int = 0, gpu: bool = False) -> KMeansResult:
    """faiss.Kmeans on all frames (no subsampling) from k-means++ seeds (faiss' own random seeding can
    merge clusters), then our exact fp32 inertia."""
    import faiss

    t0 = time.perf_counter()
    x = np.ascontiguousarray(x, dtype=np.float32)
    init = initial_centroids(torch.from_numpy(x), k, seed).numpy()
    km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, gpu=gpu, verbose=False,
                      max_points_per_centroid=math.ceil(x.shape[0] / k) + 1, min_points_per_centroid=1)
    km.train(x, init_centroids=init)
    _, d = assign(torch.from_numpy(x), torch.from_numpy(km.centroids))
    return KMeansResult(km.centroids.copy(), float(d.double().mean()), iters,
                        "faiss-gpu" if gpu else "faiss-cpu", time.perf_counter() - t0)


def train_kmeans(x: np.ndarray | torch.Tensor, k: int, iters: int = 20, seed: int = 0,
                 backend: str = "auto", device: str = "auto") -> KMeansResult:
    """Cluster frames `x` [N, D] into k centroids. backend 'auto' picks faiss on GPU when its GPU build
    is installed, else torch on the GPU, else faiss on the CPU, else torch on the CPU."""
    cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    has_faiss, faiss_gpu = faiss_available()
    if backend == "auto":
        backend = "faiss" if has_faiss and (faiss_gpu or not cuda) else "torch"
    if backend == "faiss":
        if not has_faiss:
            raise RuntimeError("backend 'faiss' asked for but faiss is not installed (pip install faiss-cpu)")
        arr = x.cpu().numpy() if isinstance(x, torch.Tensor) else x
        return kmeans_faiss(arr, k, iters, seed, gpu=cuda and faiss_gpu)
    if backend != "torch":
        raise ValueError(f"unknown k-means backend {backend!r} (auto, faiss, torch)")
    t = torch.as_tensor(x)
    return kmeans_torch(t.to("cuda" if cuda and device == "auto"
                             else (device if device != "auto" else "cpu")),
                        k, iters, seed)


def load_kmeans_checkpoint(path: str, trust_pickle: bool = False) -> np.ndarray:
    """Centroids [k, dim] from an existing k-means checkpoint: .npy, safetensors, a torch tensor file, or
    a fairseq/textlesslib sklearn joblib pickle (only with `trust_pickle`: unpickling runs code)."""
    if path.endswith(".npy"):
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:  # an object array (a pickle) or not a .npy file at all
            raise ValueError(f"{path}: not a numeric .npy array ({' '.join(str(e).split())})") from None
    elif path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        tensors = load_file(path)
        arr = tensors.get("centroids", next(iter(tensors.values())))
    elif path.endswith((".pt", ".pth")):
        obj = load_weights(path)
        if isinstance(obj, dict):
            if not isinstance(obj.get("centroids"), torch.Tensor):
                raise ValueError(f"{path}: a dict without a 'centroids' tensor (keys: "
                                 f"{sorted(map(str, obj))[:8]})")
            obj = obj["centroids"]
        if not isinstance(obj, torch.Tensor):
            raise ValueError(f"{path}: holds a {type(obj).__name__}, not a centroids tensor or a dict with "
                             f"one")
        arr = obj.numpy()
    else:
        if not trust_pickle:
            raise PermissionError(
                f"{path}: is a pickle (fairseq/textlesslib k-means are sklearn joblib pickles); loading one "
                f"can run arbitrary code. Pass --trust-pickle if you trust its source.")
        import joblib

        model = joblib.load(path)
        if not hasattr(model, "cluster_centers_"):
            raise ValueError(f"{path}: unpickled a {type(model).__name__}, which has no cluster_centers_")
        arr = model.cluster_centers_
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected centroids of shape [k, dim], got {arr.shape}")
    return arr
