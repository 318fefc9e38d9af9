"""Length-bucketed batches of audio: durations from file headers, a deterministic batch plan, and a
DataLoader whose workers decode, down-mix and resample while the model runs."""

from __future__ import annotations

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

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader with pin_memory=True, so host-to-GPU copies can be asynchronous."""
        self.audio = {sr: (w.pin_memory(), n) for sr, (w, n) in self.audio.items()}
        return self

    @property
    def wav(self) -> torch.Tensor:
        return next(iter(self.audio.values()))[0]

    @property
    def lengths(self) -> torch.Tensor:
        return next(iter(self.audio.values()))[1]


def pad(wavs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(w) for w in wavs], dtype=torch.long)
    out = torch.zeros(len(wavs), int(lengths.max()) if wavs else 0)
    for j, w in enumerate(wavs):
        out[j, : len(w)] = torch.from_numpy(w)
    return out, lengths


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
                 window: int = 4096) -> list[list[Item]]:
    """Split the corpus into windows of `window` utterances (in corpus order); inside a window, sort by
    duration and cut batches whose padded size (longest × count) stays under `max_batch_seconds`.
    Deterministic: ties keep corpus order."""
    plan = []
    for w in range(0, len(items), window):
        chunk = sorted(items[w:w + window], key=lambda it: (-it.seconds, it.index))
        batch: list[Item] = []
        for it in chunk:
            longest = batch[0].seconds if batch else it.seconds
            if batch and (len(batch) >= max_batch_size or longest * (len(batch) + 1) > max_batch_seconds):
                plan.append(batch)
                batch = []
            batch.append(it)
        if batch:
            plan.append(batch)
    return plan


class BatchDataset(Dataset):
    """Loads one planned batch, decoded once and resampled to each of `sample_rates`, padded; failures
    are returned, not raised."""

    def __init__(self, plan: list[list[Item]], sample_rates: list[int]):
        self.plan, self.sample_rates = plan, sorted(set(sample_rates))

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> Batch:
        ok, errors, seconds = [], [], []
        per_rate: dict[int, list[np.ndarray]] = {sr: [] for sr in self.sample_rates}
        for it in self.plan[i]:
            try:
                wav, sr = read_utterance(it.utt)
                resampled = {rate: resample(wav, sr, rate) for rate in self.sample_rates}
            except AudioError as e:
                errors.append((it, str(e)))
                continue
            for rate, w in resampled.items():
                per_rate[rate].append(w)
            ok.append(it)
            seconds.append(len(wav) / sr)
        return Batch(ok, {rate: pad(ws) for rate, ws in per_rate.items()}, seconds, errors)


def _worker_init(_):
    torch.set_num_threads(1)


def iterate_batches(plan: list[list[Item]], sample_rates: int | list[int], num_workers: int = 2,
                    pin_memory: bool = False) -> Iterator[Batch]:
    """Batches of the plan in plan order, loaded by `num_workers` processes (0: in this process)."""
    rates = [sample_rates] if isinstance(sample_rates, int) else list(sample_rates)
    loader = DataLoader(BatchDataset(plan, rates), batch_size=None, shuffle=False,
                        num_workers=num_workers, pin_memory=pin_memory, worker_init_fn=_worker_init,
                        prefetch_factor=4 if num_workers else None, persistent_workers=False)
    yield from loader


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
