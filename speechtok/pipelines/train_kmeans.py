"""`tok train-kmeans`: sample frames from a corpus, cluster them, save a tokenizer directory."""

from __future__ import annotations

from pathlib import Path

import torch

from speechtok.corpus import CorpusError, load_corpus
from speechtok.pipelines.batching import sample_frames
from speechtok.tokenizers.features import FeatureExtractor
from speechtok.tokenizers.kmeans import KMeansResult, train_kmeans
from speechtok.tokenizers.semantic import SemanticTokenizer


def train_tokenizer(corpus: str | Path, features: FeatureExtractor, k: int, out_dir: str | Path,
                    max_frames: int = 1_000_000, seed: int = 0, iters: int = 20, backend: str = "auto",
                    device: str = "auto", dedup: bool = False, max_batch_seconds: float = 600.0,
                    num_workers: int = 2, progress: bool = True,
                    errors: list[CorpusError] | None = None) -> tuple[SemanticTokenizer, KMeansResult]:
    """Train k-means on at most `max_frames` frames of `corpus` and save the tokenizer to `out_dir`."""
    errors = [] if errors is None else errors
    utts = load_corpus(corpus, errors)
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
