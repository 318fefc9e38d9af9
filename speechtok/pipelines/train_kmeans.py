"""`tok train-kmeans`: sample frames from a corpus, cluster them, save a tokenizer directory. With a
feature cache, the frames go to disk (fp16 chunks) and k-means streams them (tokenizers.kmeans_stream);
under torchrun each rank extracts a contiguous block of the chosen utterances and the ranks share the
Lloyd iterations (or mini-batch steps, with `batch_frames`)."""

from __future__ import annotations

from pathlib import Path

import torch

from speechtok.corpus import CorpusError, load_corpus
from speechtok.pipelines.batching import choose_for_frames, frames_of, sample_frames
from speechtok.tokenizers.features import FeatureExtractor
from speechtok.tokenizers.kmeans import KMeansResult, train_kmeans
from speechtok.tokenizers.semantic import SemanticTokenizer


def train_tokenizer(corpus: str | Path, features: FeatureExtractor, k: int, out_dir: str | Path,
                    max_frames: int = 1_000_000, seed: int = 0, iters: int = 20, backend: str = "auto",
                    device: str = "auto", dedup: bool = False, max_batch_seconds: float = 600.0,
                    num_workers: int = 2, progress: bool = True, errors: list[CorpusError] | None = None,
                    feature_cache: str | Path | None = None,
                    batch_frames: int | None = None) -> tuple[SemanticTokenizer, KMeansResult]:
    """Train k-means on at most `max_frames` frames of `corpus` and save the tokenizer to `out_dir`
    (with `feature_cache`: on every frame of the chosen utterances, streamed from that folder; with
    `batch_frames` too: mini-batch k-means, `iters` passes of that many frames a step)."""
    errors = [] if errors is None else errors
    utts = load_corpus(corpus, errors)
    if feature_cache is not None:
        return _train_streamed(corpus, utts, features, k, out_dir, max_frames, seed, iters, device, dedup,
                               max_batch_seconds, num_workers, progress, errors, Path(feature_cache),
                               batch_frames)
    x = sample_frames(features, utts, max_frames, seed, max_batch_seconds, num_workers, errors, progress)
    if len(x) < k:
        raise ValueError(f"{corpus}: only {len(x)} frames, fewer than k={k}")
    result = train_kmeans(torch.from_numpy(x), k, iters=iters, seed=seed, backend=backend, device=device)
    meta = {"kmeans": {"backend": result.backend, "iterations": result.iterations, "seed": seed,
                       "frames": int(len(x)), "inertia": result.inertia, "seconds": round(result.seconds, 3),
                       "corpus": str(corpus)}}
    tok = SemanticTokenizer(features, result.centroids, dedup=dedup, meta=meta)
    tok.save(out_dir)
    return tok, result


def _train_streamed(corpus, utts, features: FeatureExtractor, k: int, out_dir, max_frames: int, seed: int,
                    iters: int, device: str, dedup: bool, max_batch_seconds: float, num_workers: int,
                    progress: bool, errors: list[CorpusError], cache_dir: Path, batch_frames: int | None):
    import json

    import torch.distributed as dist

    from speechtok.pipelines.encode import dist_info
    from speechtok.tokenizers.kmeans_stream import FeatureCache, StreamedKMeans

    rank, world = dist_info()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
    job = {"features": features.card(), "corpus": str(corpus), "max_frames": max_frames, "seed": seed,
           "world": world}
    done = cache_dir / f"features-done.r{rank:03d}.json"
    if not done.is_file() or json.loads(done.read_text()) != job:  # a complete cache of this job is reused
        for old in cache_dir.glob(f"chunk-{rank:03d}-*.npy"):
            old.unlink()
        chosen = choose_for_frames(utts, features.frame_rate, max_frames, seed, errors)
        block = chosen[rank * len(chosen) // world: (rank + 1) * len(chosen) // world]
        cache = FeatureCache(cache_dir, rank)
        with torch.inference_mode():
            for frames in frames_of(features, block, max_batch_seconds, num_workers, errors, progress):
                cache.write(frames)
        cache.close()
        done.write_text(json.dumps(job))
    if world > 1:
        dist.barrier()
    km = StreamedKMeans(FeatureCache(cache_dir), k, seed=seed, device=device if device != "auto" else "cpu",
                        batch_frames=batch_frames)
    result = km.fit(iters, checkpoint_dir=cache_dir)
    meta = {"kmeans": {"backend": result.backend, "iterations": result.iterations, "seed": seed,
                       "frames": int(km.total), "inertia": result.inertia,
                       "seconds": round(result.seconds, 3), "corpus": str(corpus)}}
    if batch_frames is not None:
        meta["kmeans"]["batch_frames"] = batch_frames
    tok = SemanticTokenizer(features, result.centroids, dedup=dedup, meta=meta)
    if rank == 0:
        tok.save(out_dir)
    if world > 1:
        dist.barrier()
    return tok, result
