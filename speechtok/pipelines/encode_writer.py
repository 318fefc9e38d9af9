"""The write stage of `tok encode`, in its own thread: it waits for each batch's tokens to reach the host,
builds every sample's tar members (npy, json), puts samples back in corpus order and hands them to a sink
(the shard writer and its journal), checking for a stop request after each one."""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Callable

import numpy as np

from speechtok.corpus import CorpusError
from speechtok.pipelines.batching import Item, block_stop_signals
from speechtok.pipelines.encode_device import Pending, Rows
from speechtok.shards import npy_bytes, smallest_int_dtype
from speechtok.stopping import Interrupted, StopFlag
from speechtok.tokenizers.semantic import SemanticTokenizer, run_length

Entry = tuple  # (files, seconds, streams) of a sample, or a CorpusError


class StrictError(Exception):
    """--strict: the first bad input stops the job (what was written stays, and a rerun resumes)."""


def token_files(tok, tokens: np.ndarray, dedup: bool) -> dict[str, bytes]:
    """`<name>.npy` in the smallest integer dtype (codecs: [n_q, F]); with dedup, semantic units are
    run-length encoded and `<name>_durations.npy` holds the run lengths."""
    top = (tok.k if isinstance(tok, SemanticTokenizer) else tok.codebook_size) - 1
    if dedup and isinstance(tok, SemanticTokenizer):
        units, durations = run_length(tokens)
        return {f"{tok.name}.npy": npy_bytes(units.astype(smallest_int_dtype(top))),
                f"{tok.name}_durations.npy":
                    npy_bytes(durations.astype(smallest_int_dtype(int(durations.max()))))}
    return {f"{tok.name}.npy": npy_bytes(tokens.astype(smallest_int_dtype(top)))}


class CodeUsage:
    """Which codes each codebook of a stream has written in this run: a random-init or broken codec writes
    (nearly) one code, which `warning` reports once enough frames have passed to fill more."""

    def __init__(self, name: str, codebook_size: int):
        self.name, self.size = name, codebook_size
        self.seen: np.ndarray | None = None
        self.frames = 0

    def add(self, tokens: np.ndarray) -> None:
        t = np.atleast_2d(tokens)
        if self.seen is None:
            self.seen = np.zeros((len(t), self.size), dtype=bool)
        self.seen[np.arange(len(t))[:, None], t] = True
        self.frames += t.shape[-1]

    def warning(self, share: float = 0.02) -> str | None:
        """One line if, after at least one frame per code, some codebook used under `share` of its codes."""
        if self.seen is None or self.frames < self.size:
            return None
        used = self.seen.sum(1)
        if used.min() >= max(2, share * self.size):
            return None
        return (f"warning: {self.name}: codebooks use {', '.join(map(str, used))} of {self.size} codes over "
                f"{self.frames:,} frames (under {share:.0%}): a random-init or broken tokenizer?")


def sample_meta(item: Item, seconds: float, streams: dict[str, dict]) -> dict:
    """The sample's json: id, duration, labels, and per tokenizer its rates and frame count (the first
    tokenizer's also at the top level)."""
    first = next(iter(streams.values()))
    meta = {"id": item.utt.id, "duration": round(seconds, 6), **first, **item.utt.labels()}
    if len(streams) > 1:
        meta["streams"] = streams
    for key in ("start", "end"):
        if getattr(item.utt, key) is not None:
            meta[key] = getattr(item.utt, key)
    return meta


def bpe_files(name: str, bpe, tokens: np.ndarray, dedup: bool) -> tuple[dict[str, bytes], int]:
    """`<name>.npy`: a BPE's token ids of a stream's tokens (units run-length encoded first with dedup, as
    the stream is written), and how many there are."""
    ids = bpe.encode(run_length(tokens)[0] if dedup else tokens)
    return {f"{name}.npy": npy_bytes(ids.astype(smallest_int_dtype(bpe.vocab_size - 1)))}, len(ids)


class SampleBuilder:
    """A sample's tar members from its tokens: each tokenizer's npy files, each BPE stream's, and the json."""

    def __init__(self, toks, dedups: dict[str, bool], bpes: dict | None = None):
        self.toks, self.dedups, self.bpes = toks, dedups, bpes or {}
        self.usage = {t.name: CodeUsage(t.name, t.k if isinstance(t, SemanticTokenizer) else t.codebook_size)
                      for t in toks}  # codes written in this run, for the low-usage warning

    def entry(self, item: Item, seconds: float, tokens: dict[str, np.ndarray]) -> Entry:
        """(files, seconds, streams) of one sample."""
        files, streams = {}, {}
        for t in self.toks:
            self.usage[t.name].add(tokens[t.name])
            files.update(token_files(t, tokens[t.name], self.dedups[t.name]))
            streams[t.name] = {"sample_rate": t.sample_rate, "frame_rate": t.frame_rate,
                               "num_frames": int(tokens[t.name].shape[-1])}
        for name, bpe in self.bpes.items():  # for a BPE stream, "frames" are its tokens
            made, n = bpe_files(name, bpe, tokens[bpe.stream], self.dedups[bpe.stream])
            files.update(made)
            streams[name] = {"num_frames": n}
        meta = sample_meta(item, seconds, streams)
        return ({"json": json.dumps(meta, ensure_ascii=False, sort_keys=True).encode(), **files}, seconds,
                streams)


class WriterThread(threading.Thread):
    """Writes the samples of corpus positions lo..hi-1 in order through `sink(position, entry)` from the
    `Pending` batches `put` in plan order. Raises (in `finish`) Interrupted at the next sample once a stop
    was requested, StrictError at the first bad input under --strict, or whatever the sink raised."""

    def __init__(self, builder: SampleBuilder, position: dict[int, int], lo: int, hi: int, strict: bool,
                 stop: StopFlag, sink: Callable[[int, Entry | CorpusError], None], stages: dict[str, float],
                 depth: int = 4):
        super().__init__(name="tok-write", daemon=True)
        self.stages = stages  # adds "wait for device" and "build and write" seconds
        self.builder, self.position, self.lo, self.hi = builder, position, lo, hi
        self.strict, self.stop, self.sink = strict, stop, sink
        self.queue: queue.Queue = queue.Queue(depth)
        self.error: BaseException | None = None
        self.cancelled = threading.Event()
        self.next = lo
        self.ready: dict[int, Entry | CorpusError] = {}

    def put(self, pending: Pending | None) -> None:
        """Hand over a batch (None: no more); waits while the writer is `depth` batches behind."""
        while True:
            self.check()
            try:
                self.queue.put(pending, timeout=0.1)
                return
            except queue.Full:
                pass

    def check(self) -> None:
        """Raise the writer's error, if it stopped with one."""
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """After the last batch: wait until every sample is written; raise the writer's error."""
        self.put(None)
        while self.is_alive():
            self.join(0.1)
        self.check()

    def cancel(self) -> None:
        """Stop at the next sample (the caller fails): returns once the thread has stopped."""
        self.cancelled.set()
        while self.is_alive():
            self.join(0.1)

    def run(self) -> None:
        block_stop_signals()
        try:
            self._write_all()
        except BaseException as e:
            self.error = e

    def _write_all(self) -> None:
        self._stop_point()
        while True:
            try:
                pending = self.queue.get(timeout=0.1)
            except queue.Empty:
                if self.cancelled.is_set():
                    return
                continue
            if pending is None:
                break
            t0 = time.perf_counter()
            rows = pending.rows()
            t1 = time.perf_counter()
            self._collect(pending, rows)
            while self.next in self.ready:
                entry = self.ready.pop(self.next)
                if self.strict and isinstance(entry, CorpusError):
                    raise StrictError(f"{entry.file}: {entry.reason}")
                self.sink(self.next, entry)
                self.next += 1
                self._stop_point()
                if self.cancelled.is_set():
                    return
            self.stages["wait for device"] += t1 - t0
            self.stages["build and write"] += time.perf_counter() - t1
        self._stop_point()  # the main thread stops handing over batches after a stop request
        if self.next < self.hi:
            raise RuntimeError(f"the encoder stopped at position {self.next} of {self.lo}..{self.hi - 1}")

    def _stop_point(self) -> None:
        if self.stop.signum is not None and self.next < self.hi:
            raise Interrupted(self.stop.signum)

    def _collect(self, pending: Pending, rows: Rows) -> None:
        """The batch's samples (and failures) inside lo..hi-1, by position."""
        batch, mine = pending.batch, lambda it: self.lo <= self.position[it.index] < self.hi
        for it, why in batch.errors + pending.failed:
            if mine(it):
                self.ready[self.position[it.index]] = CorpusError(file=it.utt.path, id=it.utt.id, reason=why)
        for j, tokens in rows.items():
            it = batch.items[j]
            if mine(it):
                self.ready[self.position[it.index]] = self.builder.entry(it, batch.seconds[j], tokens)
