"""The data stream of every trainer: sources read in seeded global epochs, split across ranks and loader
workers so that each item is read exactly once per epoch, and a global position to resume from.

A source (speech shards, text files) is a list of units (a shard, a block of a text file), each holding
items in a fixed order. Epoch e of a source has one order for all parts, drawn from (seed, source, e);
the parts then split it as webdataset's `split_by_node` + `split_by_worker` do: part (rank, worker) reads
units order[rank::world][worker::workers]. With fewer units than parts, every part reads every unit in
the epoch's order (items in file order: the same global order) and keeps item n when
n % world == rank and (n // world) % workers == worker. Each part then passes its items through its own
seeded shuffle buffer, and starts the source's next epoch when it runs dry: sources have their own
epoch counters.

Position: a stream is a pure function of (seed, world size, workers, origin), where the origin holds, per
source, how many items G all parts together had consumed when it started (0 for a new run). Resuming on
the same world size replays it to the checkpoint's batch (exact). Resuming on another world size starts a
new stream at the checkpoint's G of each source: epoch G // N (N items per epoch), leaving out the first
G mod N items of that epoch's global order. Parts read their shares in global order at about the same
pace, so what they consumed is about that prefix. What this approximates: parts do not keep exactly the
same pace (each may be up to about a shard ahead or behind), and items waiting in shuffle buffers or in a
half-packed block count as consumed, so around that point some items are read twice or not at all in
that epoch; later epochs are exact again."""

from __future__ import annotations

import itertools
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from speechtok.shards import (ShardError, decode_sample, iter_tar, manifest_shards, read_manifest,
                              shard_problem)


def _identity(x):
    return x


def _decode_shard_item(kv: tuple) -> dict:
    return decode_sample(*kv)


def _line_of(item: tuple[str, str]) -> str:
    return item[0]


@dataclass
class Source:
    """One data source: `units`, each read by `read` into items (raw; `decode` makes them usable)."""
    name: str
    units: list
    read: Callable[[Any], Iterator]
    decode: Callable[[Any], Any] = _identity
    unit_sizes: list[int] | None = None  # items per unit, when known without reading

    def sizes(self) -> list[int]:
        if self.unit_sizes is None:
            self.unit_sizes = [sum(1 for _ in self.read(u)) for u in self.units]
        return self.unit_sizes

    def items(self) -> int:
        return sum(self.sizes())


def shard_paths(sources: list[str], verify: bool = True) -> list[Path]:
    """Every shard of the given manifests / shard folders, in order; with `verify` each is checked once
    against its manifest (size, sha256) before training reads it, and a bad one raises a ShardError."""
    return [p for src in sources for p in manifest_shards(src, verify)]


def shard_source(sources: list[str], name: str = "speech", verify: bool = True) -> Source:
    """The samples of shards (manifest.json files or shard folders); with `verify` every shard is checked
    once against its manifest (size, sha256) first, and a bad one raises a ShardError naming it."""
    units, sizes = [], []
    for src in sources:
        folder, manifest = read_manifest(src)
        for s in manifest["shards"]:
            if verify and (why := shard_problem(folder / s["name"], s)) is not None:
                raise ShardError(f"{folder / s['name']}: {why}")
            units.append(folder / s["name"])
            sizes.append(s.get("num_samples"))
    return Source(name, units, iter_tar, _decode_shard_item,
                  sizes if all(isinstance(n, int) for n in sizes) else None)


def text_blocks(path: str, block_bytes: int) -> list[tuple[str, int, int]]:
    size = Path(path).stat().st_size
    return [(path, a, min(size, a + block_bytes)) for a in range(0, max(size, 1), block_bytes)]


def read_text_block(block: tuple[str, int, int]) -> Iterator[tuple[str, str]]:
    """(line, "file:byte offset") of the non-empty lines that start in [start, end) of a UTF-8 file."""
    path, start, end = block
    with open(path, "rb") as f:
        pos = start
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":  # the line under way belongs to the previous block
                pos = start + len(f.readline())
        f.seek(pos)
        while pos < end:
            raw = f.readline()
            if not raw:
                break
            line = raw.decode("utf-8", errors="replace").strip()
            if line:
                yield line, f"{path}:{pos}"
            pos += len(raw)


def text_source(paths: list[str], block_bytes: int = 1 << 20, name: str = "text") -> Source:
    """The non-empty lines of plain text files, one document a line, read in blocks of `block_bytes`."""
    units = [b for p in paths for b in text_blocks(p, block_bytes)]
    return Source(name, units, read_text_block, _line_of)


def _rng(seed: int, name: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode()), *keys])


def split_keeps(n: int, rank: int, world: int, worker: int, workers: int) -> bool:
    """Whether item n of a global order is part (rank, worker)'s: split by rank, then by worker."""
    return n % world == rank and (n // world) % workers == worker


def part_of_epoch(src: Source, seed: int, epoch: int, rank: int, world: int, worker: int = 0,
                  workers: int = 1, skip: int = 0) -> Iterator:
    """Part (rank, worker)'s raw items of one epoch of `src`, in the epoch's global order (see module doc),
    leaving out the first `skip` items of that global order (a stream resumed on another layout)."""
    order = _rng(seed, src.name, epoch).permutation(len(src.units))
    if len(order) >= world * workers:
        if skip:
            sizes = src.sizes()
            before = np.concatenate([[0], np.cumsum([sizes[i] for i in order])])  # items ahead of each unit
        for k in list(range(len(order)))[rank::world][worker::workers]:
            items = src.read(src.units[order[k]])
            if skip:
                if before[k + 1] <= skip:
                    continue
                items = itertools.islice(items, max(0, skip - int(before[k])), None)
            yield from items
        return
    n = 0  # the same global order as above (units in epoch order, items in file order), split by item
    for i in order:
        for item in src.read(src.units[i]):
            if n >= skip and split_keeps(n, rank, world, worker, workers):
                yield item
            n += 1


def shuffled(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """A shuffle buffer of `size` items."""
    buf = []
    for x in items:
        buf.append(x)
        if len(buf) >= size:
            yield buf.pop(int(rng.integers(len(buf))))
    rng.shuffle(buf)
    yield from buf


def part_stream(src: Source, seed: int, rank: int, world: int, worker: int = 0, workers: int = 1,
                buffer: int = 1000, start: tuple[int, int] = (0, 0), epochs: int | None = None) -> Iterator:
    """Part (rank, worker)'s decoded items of `src`, epoch after epoch (`epochs` of them, or endless),
    each epoch through the part's own seeded shuffle buffer; `start` = (epoch, items of its global order
    already read) is where a stream resumed on another layout begins."""
    first, skip = start
    for epoch in itertools.count(first) if epochs is None else range(first, first + epochs):
        items = part_of_epoch(src, seed, epoch, rank, world, worker, workers, skip if epoch == first else 0)
        rng = _rng(seed, src.name, epoch, 2, rank, worker)
        for x in shuffled(items, buffer, rng):
            yield src.decode(x)


@dataclass
class Position:
    """Where a run's stream starts: its origin (step and per-source global item counts) and the layout
    (ranks × loader workers) it is split over. See the module docstring."""
    world: int
    workers: int
    origin_step: int = 0
    origin: dict[str, int] = field(default_factory=dict)

    def start(self, src: Source) -> tuple[int, int]:
        """(epoch, items of its global order read) of `src` at the origin."""
        g = self.origin.get(src.name, 0)
        if g == 0:
            return 0, 0
        n = max(1, src.items())
        return g // n, g % n

    def saved(self, consumed: dict[str, int], world: int, device: torch.device) -> dict:
        """The position to checkpoint: this rank's items consumed since the origin, summed over ranks."""
        names = sorted(consumed)
        t = torch.tensor([consumed[n] for n in names], dtype=torch.float64, device=device)
        if world > 1:
            dist.all_reduce(t)
        total = {n: self.origin.get(n, 0) + int(v) for n, v in zip(names, t.tolist())}
        return {"world_size": self.world, "workers": self.workers, "origin_step": self.origin_step,
                "origin": self.origin, "consumed": total}


def resume_position(saved: dict | None, step: int, world: int, workers: int, where: str = "") -> Position:
    """The stream to continue a checkpoint's run: the same one replayed (same layout) or a new one from
    the checkpoint's global counts (another layout; approximate, see the module docstring)."""
    if not saved:
        return Position(world, workers)
    if saved["world_size"] == world and saved["workers"] == workers:
        return Position(world, workers, saved["origin_step"], dict(saved["origin"]))
    print(f"note: {where}saved with {saved['world_size']} ranks × {saved['workers']} workers, resumed with "
          f"{world} × {workers}: the data stream restarts from the global position {saved['consumed']} "
          "(approximate near that point; see README)", file=sys.stderr)
    return Position(world, workers, step, dict(saved["consumed"]))
