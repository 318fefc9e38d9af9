"""k-means over more frames than fit in memory: frames live in a feature cache on disk (fp16 chunks), and
Lloyd's algorithm streams them chunk by chunk, so memory holds one chunk plus the centroids.

Under torchrun each rank reads only its chunks (chunk i belongs to rank i mod world) and the per-cluster
sums and counts are all-reduced. Sums are exact: an fp16 value is an integer multiple of 2^-24, so the sums
are kept as int64 multiples of 2^-24, whose addition does not depend on order; the result is therefore the
same for any number of ranks, and a run resumed from its centroid checkpoint (written after every
iteration) equals an uninterrupted one.

With `batch_frames`, mini-batch k-means (Sculley 2010, the update of sklearn's MiniBatchKMeans) replaces
Lloyd: step t draws `batch_frames` frame indices (with replacement, seeded by (seed, t), the same on every
rank), each rank assigns the drawn frames of its chunks, the exact sums and counts are all-reduced, and each
centroid moves to the mean of everything it has been assigned so far: c ← (c·v + Σx) / (v + n), v ← v + n.
The checkpoint holds (step, centroids, v), so the same determinism and resume hold."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from speechtok.tokenizers.kmeans import KMeansResult, assign, kmeans_plus_plus

SCALE = float(2 ** 24)  # fp16 values are integer multiples of 2^-24
CHECKPOINT = "kmeans-checkpoint.pt"
CHECKPOINT_STEPS = 100  # mini-batch steps between checkpoints


def _malloc_trim():
    """glibc's malloc_trim, or None elsewhere."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Give the heap's freed pages back to the system (glibc; elsewhere nothing). Measured over 10M × 768
    frames with two OpenMP threads: without it the chunk-sized blocks freed in glibc's per-thread arenas
    were not reused and the process grew by ~1.8 GB a minute; with it after every chunk, it stayed flat."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class FeatureCache:
    """A folder of `chunk-RRR-NNNNNN.npy` files, each [n, dim] float16 (RRR: the rank that wrote it), read
    in sorted name order. `write` appends frames and flushes a chunk every `chunk_frames` frames."""

    def __init__(self, folder: str | os.PathLike, rank: int = 0, chunk_frames: int = 1 << 16):
        self.folder, self.rank, self.chunk_frames = Path(folder), rank, chunk_frames
        self._pending: list[np.ndarray] = []
        self._count = 0

    def chunks(self) -> list[Path]:
        return sorted(self.folder.glob("chunk-*.npy"))

    def write(self, frames: np.ndarray) -> None:
        self._pending.append(np.asarray(frames, dtype=np.float16))
        self._count += len(frames)
        while self._count >= self.chunk_frames:
            self._flush(self.chunk_frames)

    def close(self) -> None:
        if self._count:
            self._flush(self._count)

    def _flush(self, n: int) -> None:
        data = np.concatenate(self._pending)
        self.folder.mkdir(parents=True, exist_ok=True)
        index = sum(1 for _ in self.folder.glob(f"chunk-{self.rank:03d}-*.npy"))
        tmp = self.folder / f".chunk-{self.rank:03d}-{index:06d}.npy.tmp"
        with open(tmp, "wb") as f:
            np.save(f, data[:n])
        os.replace(tmp, self.folder / f"chunk-{self.rank:03d}-{index:06d}.npy")
        rest = data[n:]
        self._pending, self._count = ([rest] if len(rest) else []), len(rest)

    def sizes(self) -> list[tuple[Path, int, int]]:
        """(chunk, frames, dim) of every chunk, from the .npy headers only."""
        out = []
        for p in self.chunks():
            a = np.load(p, mmap_mode="r")
            if a.ndim != 2 or a.dtype != np.float16:
                raise ValueError(f"{p}: expected [frames, dim] float16, got {a.dtype} {a.shape}")
            out.append((p, a.shape[0], a.shape[1]))
        return out


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if _dist()[1] > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def _all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Every rank's `t` (same shape on all ranks) concatenated in rank order."""
    world = _dist()[1]
    if world == 1:
        return t
    import torch.distributed as dist

    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t)
    return torch.cat(parts)


class StreamedKMeans:
    """Lloyd's algorithm (or mini-batch k-means, with `batch_frames`) over a FeatureCache; see the module
    docstring."""

    def __init__(self, cache: FeatureCache, k: int, seed: int = 0, device: str | torch.device = "cpu",
                 init_sample: int = 64, batch_frames: int | None = None):
        self.cache, self.k, self.seed, self.device = cache, k, seed, torch.device(device)
        self.batch_frames = batch_frames
        self.rank, self.world = _dist()
        self.sizes = cache.sizes()
        if not self.sizes:
            raise ValueError(f"{cache.folder}: no feature chunks")
        self.total = sum(n for _, n, _ in self.sizes)
        self.dim = self.sizes[0][2]
        if self.total < k:
            raise ValueError(f"{cache.folder}: only {self.total} frames, fewer than k={k}")
        self.offsets = np.cumsum([0] + [n for _, n, _ in self.sizes])
        self.mine = [i for i in range(len(self.sizes)) if i % self.world == self.rank]
        self.init_sample = init_sample
        self._maps: dict[int, np.ndarray] = {}

    def fingerprint(self) -> str:
        """What a checkpoint is valid for: the chunks (names, sizes), k, the seed (and the batch size)."""
        what = [[p.name, n, d] for p, n, d in self.sizes] + [self.k, self.seed]
        if self.batch_frames is not None:
            what.append({"mini-batch": self.batch_frames})
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]

    def _chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        for i in self.mine:
            yield i, torch.from_numpy(np.load(self.sizes[i][0])).to(self.device)
            release_freed_memory()  # what the last chunk's work freed: memory stays one chunk's worth

    def _rows(self, i: int, rows: np.ndarray) -> torch.Tensor:
        """Rows `rows` of chunk i on the device, read through a memory map kept open."""
        if i not in self._maps:
            self._maps[i] = np.load(self.sizes[i][0], mmap_mode="r")
        return torch.from_numpy(np.ascontiguousarray(self._maps[i][rows])).to(self.device)

    def _add_exact(self, sums: torch.Tensor, counts: torch.Tensor, x: torch.Tensor, labels: torch.Tensor,
                   n: int, chunk: int) -> None:
        """Add fp16 rows `x` to their clusters' int64 sums (multiples of 2^-24) and counts; `n` bounds the
        number of rows any sum can gather."""
        if float(x.abs().max()) * n >= 2.0 ** 62 / SCALE:
            raise ValueError(f"{self.sizes[chunk][0]}: feature values too large for exact int64 sums")
        for j in range(0, len(x), 8192):  # int64 copies of 8192 rows at a time
            sums.index_add_(0, labels[j:j + 8192], (x[j:j + 8192].float() * SCALE).to(torch.int64))
        counts += torch.bincount(labels, minlength=self.k)

    def initial_centroids(self) -> torch.Tensor:
        """k-means++ on the same seeded sample of init_sample·k frames for any number of ranks: each rank
        contributes the sampled rows of its chunks, gathered in global frame order."""
        g = torch.Generator().manual_seed(self.seed)  # the sample `kmeans.initial_centroids` takes in memory
        picked = torch.randperm(self.total, generator=g)[: min(self.total, self.init_sample * self.k)].numpy()
        rows = torch.zeros(len(picked), self.dim, dtype=torch.float16)
        for i in self.mine:
            lo, hi = self.offsets[i], self.offsets[i + 1]
            sel = np.flatnonzero((picked >= lo) & (picked < hi))
            if len(sel):
                rows[sel] = torch.from_numpy(np.load(self.sizes[i][0], mmap_mode="r")[picked[sel] - lo])
        rows = _all_reduce(rows.float())  # each row is non-zero on one rank only
        return kmeans_plus_plus(rows.to(self.device), self.k, g)

    def step(self, c: torch.Tensor) -> tuple[torch.Tensor, float]:
        """One Lloyd iteration: (new centroids, mean squared distance to the old ones)."""
        sums = torch.zeros(self.k, self.dim, dtype=torch.int64, device=self.device)
        counts = torch.zeros(self.k, dtype=torch.int64, device=self.device)
        inertia = torch.zeros(1, dtype=torch.float64, device=self.device)
        far = []
        cn = (c * c).sum(1)
        for i, x in self._chunks():
            labels, d = assign(x, c, c_sqnorm=cn)
            self._add_exact(sums, counts, x, labels, self.total, i)
            inertia += d.double().sum()
            top = torch.topk(d, min(self.k, len(d)))
            far.append((top.values.double(), top.indices + int(self.offsets[i])))
        _all_reduce(sums), _all_reduce(counts), _all_reduce(inertia)
        new = (sums.double() / SCALE / counts.clamp(min=1)[:, None].double()).float()
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            new[empty] = self._farthest(far, len(empty)).to(new)
        return new, float(inertia) / self.total

    def batch(self, step: int) -> np.ndarray:
        """Mini-batch `step`'s global frame indices, sorted: drawn with replacement (as sklearn), seeded by
        (seed, step) alone, so any rank and a resumed run draw the same."""
        picked = np.random.default_rng([self.seed % 2 ** 64, step]).integers(0, self.total, self.batch_frames)
        return np.sort(picked)

    def minibatch_step(self, c: torch.Tensor, seen: torch.Tensor,
                       step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One mini-batch update: (new centroids, new per-cluster counts of frames seen so far)."""
        sums = torch.zeros(self.k, self.dim, dtype=torch.int64, device=self.device)
        counts = torch.zeros(self.k, dtype=torch.int64, device=self.device)
        cn = (c * c).sum(1)
        picked = self.batch(step)
        for i in self.mine:  # per chunk, so the matrix shapes (hence the bits) do not depend on the ranks
            lo, hi = np.searchsorted(picked, self.offsets[i: i + 2])
            if lo < hi:
                x = self._rows(i, picked[lo:hi] - self.offsets[i])
                self._add_exact(sums, counts, x, assign(x, c, c_sqnorm=cn)[0], self.batch_frames, i)
        _all_reduce(sums), _all_reduce(counts)
        total = seen + counts
        moved = (c.double() * seen[:, None] + sums.double() / SCALE) / total.clamp(min=1)[:, None]
        return torch.where((counts > 0)[:, None], moved.float(), c), total

    def _farthest(self, far: list, n: int) -> torch.Tensor:
        """The n frames farthest from their centroid over all ranks (ties: the lower frame index)."""
        values = torch.cat([v for v, _ in far]) if far else torch.zeros(0, dtype=torch.float64)
        index = torch.cat([i for _, i in far]) if far else torch.zeros(0, dtype=torch.long)
        order = torch.argsort(-values, stable=True)[: self.k]
        pad = self.k - len(order)
        mine_v = torch.cat([values[order].cpu(), torch.full((pad,), -1.0, dtype=torch.float64)])
        mine_i = torch.cat([index[order].cpu(), torch.full((pad,), -1, dtype=torch.long)])
        all_v, all_i = _all_gather_cat(mine_v), _all_gather_cat(mine_i)
        key = sorted(range(len(all_v)), key=lambda j: (-float(all_v[j]), int(all_i[j])))[:n]
        rows = torch.zeros(n, self.dim, dtype=torch.float32)
        for slot, j in enumerate(key):
            g = int(all_i[j])
            chunk = int(np.searchsorted(self.offsets, g, side="right") - 1)
            if chunk in self.mine:
                row = np.load(self.sizes[chunk][0], mmap_mode="r")[g - self.offsets[chunk]]
                rows[slot] = torch.from_numpy(row.astype(np.float32))
        return _all_reduce(rows)

    def steps(self, iters: int) -> int:
        """Lloyd iterations, or mini-batch steps: `iters` passes' worth of frames."""
        return iters if self.batch_frames is None else -(-iters * self.total // self.batch_frames)

    def fit(self, iters: int, checkpoint_dir: str | os.PathLike | None = None,
            on_iteration=None) -> KMeansResult:
        """`iters` Lloyd iterations (or `iters` passes of mini-batches), resuming from `checkpoint_dir`'s
        checkpoint when it is for this job; returns the centroids and their exact mean squared distance."""
        t0 = time.perf_counter()
        ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
        start, c, seen = 0, None, torch.zeros(self.k, dtype=torch.int64, device=self.device)
        if ckpt is not None and ckpt.is_file():
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            if state.get("fingerprint") == self.fingerprint():
                start, c = int(state["iteration"]), state["centroids"].to(self.device)
                seen = state.get("seen", seen).to(self.device)
        if c is None:
            c = self.initial_centroids()
        steps = self.steps(iters)
        for it in range(start, steps):
            if self.batch_frames is None:
                c, _ = self.step(c)
            else:
                c, seen = self.minibatch_step(c, seen, it)
            due = self.batch_frames is None or (it + 1) % CHECKPOINT_STEPS == 0 or it + 1 == steps
            if ckpt is not None and self.rank == 0 and due:
                tmp = ckpt.with_suffix(".tmp")
                state = {"fingerprint": self.fingerprint(), "iteration": it + 1, "centroids": c.cpu(),
                         "seen": seen.cpu()}
                torch.save(state, tmp)
                os.replace(tmp, ckpt)
            if on_iteration is not None:
                on_iteration(it + 1)
        inertia = self.inertia(c)
        kind = "streamed" if self.batch_frames is None else "streamed-minibatch"
        return KMeansResult(c.cpu().numpy(), inertia, steps, f"torch-{self.device.type}-{kind}",
                            time.perf_counter() - t0)

    def inertia(self, c: torch.Tensor) -> float:
        """Mean squared distance of every cached frame to its nearest centroid."""
        total = torch.zeros(1, dtype=torch.float64, device=self.device)
        cn = (c * c).sum(1)
        for _, x in self._chunks():
            total += assign(x, c, c_sqnorm=cn)[1].double().sum()
        return float(_all_reduce(total)) / self.total
