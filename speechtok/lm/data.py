"""A streaming, packed, resumable token dataset over shards and text files.

Each (rank, loader worker) pair reads its own part of the data: whole shards when there are at least as
many shards as parts, else every n-th sample. Samples pass a seeded shuffle buffer, become sequences in
the configured mix of formats, and are packed back to back into blocks of `seq_len` tokens. The stream is
a pure function of the seed, so a position is just a count of batches, and resuming replays the stream
up to it without running the model (token data is small; this takes seconds)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from speechtok.lm.sequences import FORMATS, SequenceBuilder
from speechtok.shards import decode_sample, iter_tar, manifest_shards


@dataclass
class DataConfig:
    shards: list[str] = field(default_factory=list)  # manifest.json files or shard folders
    text: list[str] = field(default_factory=list)  # plain text files, one document a line
    eval_shards: list[str] = field(default_factory=list)
    mix: dict[str, float] = field(default_factory=lambda: {"speech": 1.0})
    dedup: bool | None = None  # None: as the shards were written
    seq_len: int = 1024
    shuffle_buffer: int = 1000
    span_words: tuple[int, int] = (1, 10)
    num_workers: int = 1

    def __post_init__(self):
        unknown = set(self.mix) - set(FORMATS)
        if unknown:
            raise ValueError(f"data.mix: unknown formats {sorted(unknown)}; choose from {FORMATS}")
        if not self.mix or min(self.mix.values()) < 0 or sum(self.mix.values()) <= 0:
            raise ValueError("data.mix: give non-negative weights that sum to more than 0")
        if self.mix.get("text", 0) > 0 and not self.text:
            raise ValueError("data.mix asks for text but data.text lists no files")
        self.span_words = tuple(self.span_words)


def shard_paths(sources: list[str], verify: bool = True) -> list[Path]:
    """Every shard of the given manifests / shard folders, in order; with `verify` each is checked once
    against its manifest (size, sha256) before training reads it, and a bad one raises a ShardError."""
    return [p for src in sources for p in manifest_shards(src, verify)]


def _samples(paths: list[Path], part: int, parts: int) -> Iterator[dict]:
    """This part's samples: shards dealt round-robin when there are enough, else every parts-th sample."""
    if len(paths) >= parts:
        for p in paths[part::parts]:
            for key, files in iter_tar(p):
                yield decode_sample(key, files)
        return
    n = 0
    for p in paths:
        for key, files in iter_tar(p):
            if n % parts == part:
                yield decode_sample(key, files)
            n += 1


def _lines(paths: list[str], part: int, parts: int) -> Iterator[str]:
    n = 0
    for p in paths:
        with open(p, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    if n % parts == part:
                        yield line
                    n += 1


def _shuffled(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    buf = []
    for x in items:
        buf.append(x)
        if len(buf) >= size:
            yield buf.pop(int(rng.integers(len(buf))))
    rng.shuffle(buf)
    yield from buf


def shuffled_epochs(paths: list[Path], part: int, parts: int, buffer: int, epoch_rng) -> Iterator[tuple[np.random.Generator, Iterator[dict]]]:
    """Endless epochs of this part's samples, each as (its rng, its samples): `epoch_rng(epoch)` orders the
    shards and drives the shuffle buffer; consumers draw their own randomness (crops) from the same rng,
    so a run replays exactly."""
    for epoch in itertools.count():
        rng = epoch_rng(epoch)
        order = rng.permutation(len(paths))
        yield rng, _shuffled(_samples([paths[i] for i in order], part, parts), buffer, rng)


class PackedTokens(IterableDataset):
    """Endless [seq_len] blocks of token ids for one rank; `skip_batches` resumes a position."""

    def __init__(self, cfg: DataConfig, builder: SequenceBuilder, shards: list[str], rank: int = 0, world: int = 1,
                 seed: int = 0, batch_size: int = 1, skip_batches: int = 0, epochs: int | None = None):
        self.cfg, self.builder, self.rank, self.world, self.seed = cfg, builder, rank, world, seed
        self.paths = shard_paths(shards)
        self.batch_size, self.skip_batches, self.epochs = batch_size, skip_batches, epochs
        if not self.paths and cfg.mix.get("text", 0) < sum(cfg.mix.values()):
            raise ValueError("data: no shards, but the mix asks for speech formats")

    def _sequences(self, part: int, parts: int) -> Iterator[list[int]]:
        formats = [f for f, w in self.cfg.mix.items() if w > 0]
        weights = np.array([self.cfg.mix[f] for f in formats], dtype=np.float64)
        weights /= weights.sum()
        epochs = shuffled_epochs(self.paths, part, parts, self.cfg.shuffle_buffer,
                                 lambda epoch: np.random.default_rng([self.seed, epoch, part]))
        for rng, samples in itertools.islice(epochs, self.epochs):
            lines = _lines(self.cfg.text, part, parts) if "text" in formats else iter(())
            while True:
                fmt = formats[int(rng.choice(len(formats), p=weights))]
                src = lines if fmt == "text" else samples
                x = next(src, None)
                if x is None:
                    break  # the epoch ends when either source runs dry
                yield self.builder.text(x) if fmt == "text" else self.builder.build(fmt, x, rng)

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # A DataLoader takes batches from its workers round-robin, starting with worker 0. Resumed at batch
        # `skip_batches`, worker 0 must continue the stream that made that batch: rotate the roles.
        role = (worker + self.skip_batches) % workers
        part, parts = self.rank * workers + role, self.world * workers
        skip_blocks = len(range(role, self.skip_batches, workers)) * self.batch_size
        L = self.cfg.seq_len
        buf: list[int] = []
        emitted = 0
        for seq in self._sequences(part, parts):
            buf += seq
            while len(buf) >= L:
                block, buf = buf[:L], buf[L:]
                emitted += 1
                if emitted > skip_blocks:
                    yield torch.tensor(block, dtype=torch.long)


def token_loader(dataset: PackedTokens, num_workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=dataset.batch_size, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False,
                      prefetch_factor=4 if num_workers else None)
