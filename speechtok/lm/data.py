"""The token LM's stream: speech shards and text files mixed by token share, packed into blocks.

Each source (speech samples, text lines) is read in its own seeded epochs and split across ranks and
loader workers so every item is read once per epoch (training/stream.py). The speech formats (speech,
interleaved, asr, tts) draw samples from the speech source, `text` draws lines from the text source. The
`mix` weights are shares of the *tokens* trained on: each part picks the next format as the one furthest
below its share so far, so the shares hold to within about one sequence's length. Sequences are packed
back to back into blocks of `seq_len` tokens. The stream is a pure function of the seed, the layout and
its origin (training/stream.Position), so resuming on the same world size replays it to a batch count."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from speechtok.lm.config import DataConfig
from speechtok.lm.sequences import SequenceBuilder
from speechtok.training.stream import Position, Source, part_stream, shard_paths, shard_source, text_source

__all__ = ["DataConfig", "PackedTokens", "token_loader", "shard_paths"]


class PackedTokens(IterableDataset):
    """Endless blocks for one rank: {"ids": [seq_len] token ids, "consumed": items read so far per source
    (`source_names` order), "part": the loader worker's role}. `skip_batches` resumes a position;
    `epochs` ends the stream after that many epochs of speech (evaluation); `text=False` leaves text out."""

    def __init__(self, cfg: DataConfig, builder: SequenceBuilder, shards: list[str], rank: int = 0,
                 world: int = 1,
                 seed: int = 0, batch_size: int = 1, skip_batches: int = 0, epochs: int | None = None,
                 position: Position | None = None, text: bool = True):
        self.cfg, self.builder, self.rank, self.world, self.seed = cfg, builder, rank, world, seed
        self.batch_size, self.skip_batches, self.epochs = batch_size, skip_batches, epochs
        self.position = position
        mix = {f: w for f, w in cfg.mix.items() if w > 0 and (text or f != "text")}
        if not mix:
            raise ValueError("data.mix: no formats left")
        self.sources: dict[str, Source] = {}
        if set(mix) - {"text"}:
            if not shards:
                raise ValueError("data: no shards, but the mix asks for speech formats")
            self.sources["speech"] = shard_source(shards)
            for src in shards:
                builder.check_shards(src)
        if "text" in mix:
            self.sources["text"] = text_source(cfg.text, cfg.text_block_bytes)
        self.formats = list(mix)
        self.weights = np.array([mix[f] for f in self.formats], dtype=np.float64) / sum(mix.values())
        self.source_names = sorted(self.sources)

    def sequences(self, rank: int, worker: int, workers: int, consumed: dict[str, int] | None = None
                  ) -> Iterator[tuple[str, list[int]]]:
        """Part (rank, worker)'s (format, token ids) sequences, formats chosen to hold the mix's token
        shares; `consumed` counts the items drawn from each source."""
        consumed = {} if consumed is None else consumed
        position = self.position or Position(self.world, workers)
        streams = {}
        for name, src in self.sources.items():
            streams[name] = part_stream(src, self.seed, rank, self.world, worker, workers,
                                        self.cfg.shuffle_buffer,
                                        position.start(src), self.epochs if name == "speech" else None)
            consumed.setdefault(name, 0)
        rng = np.random.default_rng([self.seed, position.origin_step, rank, worker, 3])  # spans and crops
        tokens = np.zeros(len(self.formats))
        while True:
            i = int(np.argmin(tokens / self.weights))  # the format furthest below its share
            fmt = self.formats[i]
            name = "text" if fmt == "text" else "speech"
            x = next(streams[name], None)
            if x is None:
                return  # a finite (evaluation) stream ran out
            consumed[name] += 1
            seq = self.builder.text(x) if fmt == "text" else self.builder.build(fmt, x, rng)
            tokens[i] += len(seq)
            yield fmt, seq

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # A DataLoader takes batches from its workers round-robin, starting with worker 0. Resumed at batch
        # `skip_batches`, worker 0 must continue the stream that made that batch: rotate the roles.
        role = (worker + self.skip_batches) % workers
        skip_blocks = len(range(role, self.skip_batches, workers)) * self.batch_size
        L = self.cfg.seq_len
        buf: list[int] = []
        emitted = 0
        consumed: dict[str, int] = {}
        for _, seq in self.sequences(self.rank, role, workers, consumed):
            buf += seq
            while len(buf) >= L:
                block, buf = buf[:L], buf[L:]
                emitted += 1
                if emitted > skip_blocks:
                    yield {"ids": torch.tensor(block, dtype=torch.long), "part": role,
                           "consumed": torch.tensor([consumed[n] for n in self.source_names],
                                                    dtype=torch.long)}


def token_loader(dataset: PackedTokens, num_workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=dataset.batch_size, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False,
                      prefetch_factor=4 if num_workers else None)
