"""Length-bucketed batches of audio: durations from file headers, a deterministic batch plan, and the
read stage of a pipeline: loader workers decode, down-mix and resample one utterance each, and a collator
thread pads them into batches (pinned for the GPU) ahead of the model, so the main thread only runs it."""

from __future__ import annotations

import math
import queue
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from speechtok.audio import AudioError, read_utterance, resample, utterance_seconds
from speechtok.corpus import CorpusError, Utterance


@dataclass
class Item:
    index: int  # position in the corpus
    utt: Utterance
    seconds: float


@dataclass
class Batch:
    items: list[Item]
    audio: dict[int, tuple[torch.Tensor, torch.Tensor]]  # sample rate → (wav [B, T] zero-padded, lengths [B])
    seconds: list[float]  # each item's decoded duration
    errors: list[tuple[Item, str]] = field(default_factory=list)  # items that failed to load

    @property
    def wav(self) -> torch.Tensor:
        return next(iter(self.audio.values()))[0]

    @property
    def lengths(self) -> torch.Tensor:
        return next(iter(self.audio.values()))[1]


def bucket_seconds(seconds: float) -> float:
    """The padded duration of a batch whose longest utterance lasts `seconds`: rounded up on a fixed
    ladder of 8 lengths per octave (at most 12.5% padding), so a corpus gives the device few shapes."""
    step = 2.0 ** (math.floor(math.log2(max(seconds, 1 / 16))) - 3)
    return math.ceil(seconds / step) * step


def pad(wavs: list[np.ndarray], width: int = 0, pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows zero-padded to the longest (or `width`, if longer) and their lengths; `pin`: in page-locked
    memory, so the copy to the GPU can run while the host goes on."""
    lengths = torch.tensor([len(w) for w in wavs], dtype=torch.long)
    width = max([width] + [len(w) for w in wavs])
    out = torch.empty(len(wavs), width, pin_memory=pin)
    rows = out.numpy()  # numpy copies: torch's would start an OpenMP team in this thread, which spins
    for j, w in enumerate(wavs):
        rows[j, : len(w)] = w
        rows[j, len(w):] = 0
    return out, (lengths.pin_memory() if pin else lengths)


def probe_durations(utts: list[Utterance], errors: list[CorpusError], threads: int = 8) -> list[Item]:
    """Every utterance's duration: the manifest's when it gives one (lhotse), else read from its header (in
    threads: this is I/O); unreadable files go to `errors`."""
    if all(u.seconds is not None for u in utts):  # no I/O at all: a 100k-cut manifest starts at once
        return [Item(i, u, u.seconds) for i, u in enumerate(utts)]

    def one(i_u):
        i, u = i_u
        try:
            return Item(i, u, utterance_seconds(u)), None
        except AudioError as e:
            return None, CorpusError(file=u.path, id=u.id, reason=str(e))

    items = []
    with ThreadPoolExecutor(threads) as pool:
        for item, err in pool.map(one, enumerate(utts)):
            if err is not None:
                errors.append(err)
            else:
                items.append(item)
    return items


def plan_batches(items: list[Item], max_batch_seconds: float, max_batch_size: int,
                 window: int = 4096, buckets: bool = False) -> list[list[Item]]:
    """Split the corpus into windows of `window` utterances (in corpus order); inside a window, sort by
    duration and cut batches whose padded size (longest, or its `bucket_seconds` with `buckets`, × count)
    stays under `max_batch_seconds`. Deterministic: ties keep corpus order."""
    plan = []
    for w in range(0, len(items), window):
        chunk = sorted(items[w:w + window], key=lambda it: (-it.seconds, it.index))
        batch: list[Item] = []
        for it in chunk:
            longest = batch[0].seconds if batch else it.seconds
            width = bucket_seconds(longest) if buckets else longest
            if batch and (len(batch) >= max_batch_size or width * (len(batch) + 1) > max_batch_seconds):
                plan.append(batch)
                batch = []
            batch.append(it)
        if batch:
            plan.append(batch)
    return plan


class UtteranceDataset(Dataset):
    """One utterance, decoded once and resampled to each of `sample_rates`; a failure is returned (its
    reason), not raised. Arrays, not tensors: a worker's tensors travel through shared-memory files,
    which cost more than pickling (measured: 2.3x slower loading)."""

    def __init__(self, items: list[Item], sample_rates: list[int]):
        self.items, self.sample_rates = items, sorted(set(sample_rates))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[dict[int, np.ndarray], float] | str:
        it = self.items[i]
        try:
            wav, sr = read_utterance(it.utt)
            return {rate: resample(wav, sr, rate) for rate in self.sample_rates}, len(wav) / sr
        except AudioError as e:
            return str(e)


def _worker_init(_):
    torch.set_num_threads(1)


def _as_is(x):
    return x


def block_stop_signals() -> None:
    """In a helper thread: leave SIGTERM / SIGINT to the main thread, whose handler then runs at once."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})


class BatchStream:
    """Batches of the plan in plan order. `num_workers` loader processes (0: the collator thread itself)
    decode utterances one each; a collator thread pads them into batches (`buckets`: to the plan's
    bucket width; `pin`: page-locked) and keeps up to `depth` ready. Iterate, then `close()`."""

    def __init__(self, plan: list[list[Item]], sample_rates: int | list[int], num_workers: int = 2,
                 pin: bool = False, buckets: bool = False, depth: int = 3):
        self.plan, self.pin, self.buckets = plan, pin, buckets
        self.rates = sorted({sample_rates} if isinstance(sample_rates, int) else set(sample_rates))
        items = [it for batch in plan for it in batch]
        loader = DataLoader(UtteranceDataset(items, self.rates), batch_size=None, shuffle=False,
                            num_workers=num_workers, collate_fn=_as_is, worker_init_fn=_worker_init,
                            prefetch_factor=4 if num_workers else None, persistent_workers=False)
        self._loaded = iter(loader)  # forks the workers here, before any thread of ours runs
        self._ready: queue.Queue = queue.Queue(depth)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._collate_all, name="tok-collate", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[Batch]:
        while True:
            batch = self._ready.get()
            if batch is None:
                return
            if isinstance(batch, BaseException):
                raise batch
            yield batch

    def close(self) -> None:
        """Stop the collator and the loader workers (also mid-stream)."""
        self._closed.set()
        while self._thread.is_alive():
            try:
                self._ready.get(timeout=0.05)  # unblock a collator waiting to hand over a batch
            except queue.Empty:
                pass
        self._loaded = None

    def _put(self, x) -> bool:
        while not self._closed.is_set():
            try:
                self._ready.put(x, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _collate_all(self) -> None:
        block_stop_signals()
        try:
            for batch in self.plan:
                loaded = []
                for _ in batch:
                    if self._closed.is_set():
                        return
                    loaded.append(next(self._loaded))
                if not self._put(self.collate(batch, loaded)):
                    return
            self._put(None)
        except BaseException as e:  # a dead loader worker: raised in the consumer
            self._put(e)

    def collate(self, items: list[Item], loaded: list) -> Batch:
        """One batch from its utterances as loaded (samples per rate and seconds, or a failure reason)."""
        ok = [(it, x) for it, x in zip(items, loaded) if not isinstance(x, str)]
        errors = [(it, x) for it, x in zip(items, loaded) if isinstance(x, str)]
        audio = {}
        for rate in self.rates:
            longest = max((it.seconds for it, _ in ok), default=0.0)
            width = math.ceil(bucket_seconds(longest) * rate) if self.buckets and ok else 0
            audio[rate] = pad([x[0][rate] for _, x in ok], width, self.pin)
        return Batch([it for it, _ in ok], audio, [x[1] for _, x in ok], errors)


def iterate_batches(plan: list[list[Item]], sample_rates: int | list[int], num_workers: int = 2,
                    pin_memory: bool = False) -> Iterator[Batch]:
    """Batches of the plan in plan order, read by a `BatchStream`."""
    stream = BatchStream(plan, sample_rates, num_workers, pin_memory)
    try:
        yield from stream
    finally:
        stream.close()


def resolve_device(device: str) -> torch.device:
    """'auto' → this process's GPU (LOCAL_RANK under torchrun) or the CPU; 'cuda' → this process's GPU.
    A ValueError naming --device for a GPU that is not there, or one index shared by a node's ranks."""
    import os

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is visible here (use --device cpu or auto)")
    if dev.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices (0-based)")
    if int(os.environ.get("LOCAL_WORLD_SIZE", 1)) > 1:
        raise ValueError(f"--device {device}: under torchrun every rank of a node would use that one GPU; "
                         "give 'cuda' or 'auto' (each rank takes its LOCAL_RANK)")
    return dev


def choose_for_frames(utts: list[Utterance], frame_rate: float, max_frames: int, seed: int,
                      errors: list[CorpusError]) -> list[Item]:
    """Utterances in a seeded random order until their frames (estimated from durations) reach
    `max_frames` (2% over, so that exactly `max_frames` can be kept after decoding)."""
    order = np.random.default_rng(seed).permutation(len(utts))
    budget, chosen = 0, []
    for it in probe_durations([utts[i] for i in order], errors):
        chosen.append(it)
        budget += int(it.seconds * frame_rate)
        if budget >= max_frames * 1.02:
            break
    return chosen


def frames_of(features, chosen: list[Item], max_batch_seconds: float, num_workers: int,
              errors: list[CorpusError], progress: bool = False) -> Iterator[np.ndarray]:
    """Each chosen utterance's feature frames [n, dim] float32, in batch order."""
    from tqdm import tqdm

    plan = plan_batches(chosen, max_batch_seconds, 256, window=len(chosen) or 1)
    bar = tqdm(total=len(chosen), unit="utt", desc="features", disable=not progress)
    for batch in iterate_batches(plan, [features.sample_rate], num_workers):
        for it, why in batch.errors:
            errors.append(CorpusError(file=it.utt.path, id=it.utt.id, reason=why))
        if batch.items:
            feats, n = features(batch.wav, batch.lengths)
            feats = feats.float().cpu()
            for j in range(len(batch.items)):
                yield feats[j, : int(n[j])].numpy()
        bar.update(len(batch.items) + len(batch.errors))
    bar.close()


def sample_frames(features, utts: list[Utterance], max_frames: int, seed: int, max_batch_seconds: float,
                  num_workers: int, errors: list[CorpusError], progress: bool = False) -> np.ndarray:
    """Frame features for k-means: utterances in a seeded random order until `max_frames` frames are
    collected, then a seeded uniform subsample of exactly `max_frames` if there are more."""
    chosen = choose_for_frames(utts, features.frame_rate, max_frames, seed, errors)
    collected = list(frames_of(features, chosen, max_batch_seconds, num_workers, errors, progress))
    if not collected:
        raise ValueError("no frames could be extracted from the corpus")
    x = np.concatenate(collected)
    if len(x) > max_frames:
        rng = np.random.default_rng(seed)
        rng.permutation(len(utts))  # the draw `choose_for_frames` made: the subsample stays as it was
        x = x[np.sort(rng.choice(len(x), max_frames, replace=False))]
    return x
