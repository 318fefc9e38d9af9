"""`tok acoustic train CONFIG`: train the semantic → codec-token model on shards that hold both streams.

    output: runs/acoustic
    shards: [shards/manifest.json]        # written by `tok encode -t KM -t encodec:...`
    codec: encodec                        # the codec stream to model
    n_q: 8
    pattern: delay                        # or coarse_fine (with n_coarse)
    model: {dim: 512, layers: 8, heads: 8}
    train: {batch_size: 16, steps: 20000, lr: 3.0e-4, warmup: 500, crop_seconds: 10}

Uses the token LM's optimizer, schedule, checkpoints (resume by rerunning) and metrics."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
import torch
import yaml

from speechtok.lm.acoustic import AcousticConfig, AcousticModel, frames_per_dedup_unit, to_steps
from speechtok.lm.data import shuffled_epochs, shard_paths
from speechtok.lm.parallel import init_distributed, parallelize
from speechtok.lm.train import Metrics, build_optimizer, load_checkpoint, lr_at, save_checkpoint
from speechtok.lm.vocab import speech_streams
from speechtok.shards import read_manifest, read_shards
from speechtok.tokenizers.semantic import run_length
from speechtok.unit_stream import unit_stream


@dataclass
class AcousticTrainConfig:
    batch_size: int = 16
    steps: int = 20000
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup: int = 500
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0
    crop_seconds: float = 10.0
    precision: str = "bf16"
    log_every: int = 10
    save_every: int = 1000
    keep_checkpoints: int = 2
    shuffle_buffer: int = 1000
    seed: int = 0


@dataclass
class AcousticRun:
    output: str
    shards: list[str]
    codec: str
    n_q: int | None = None
    pattern: str = "delay"
    n_coarse: int = 2
    dedup: bool = False
    model: dict = field(default_factory=dict)
    train: AcousticTrainConfig = field(default_factory=AcousticTrainConfig)


def load_acoustic_config(path: str | Path) -> AcousticRun:
    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    train = AcousticTrainConfig(**(raw.pop("train", {}) or {}))
    run = AcousticRun(**raw, train=train)
    base = path.parent
    run.shards = [str(base / s) if not Path(s).is_absolute() else s for s in run.shards]
    run.output = str(base / run.output) if not Path(run.output).is_absolute() else run.output
    return run


def pair(sample: dict, cfg: AcousticConfig, crop_frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(units, step tokens) of a random crop of at most `crop_frames` codec frames."""
    units = sample[cfg.semantic_stream]
    durations = sample.get(cfg.semantic_stream + "_durations")
    frames = np.repeat(units, durations) if durations is not None else units
    codes = sample[cfg.codec_stream][: cfg.n_q].astype(np.int64)
    T = codes.shape[1]
    a = int(rng.integers(0, T - crop_frames + 1)) if T > crop_frames else 0
    b = min(T, a + crop_frames)
    ratio = cfg.semantic_rate / cfg.codec_rate
    sem = frames[int(a * ratio): min(len(frames), int(np.ceil(b * ratio)))]
    if cfg.dedup:
        sem = run_length(sem)[0]
    return sem.astype(np.int64), to_steps(cfg, codes[:, a:b])


def acoustic_config(run: AcousticRun) -> AcousticConfig:
    """The model config from the shards' tokenizer cards and the run's choices."""
    _, manifest = read_manifest(run.shards[0])
    sem_name, sem, codec_name, card = speech_streams(manifest, run.codec)
    n_q = run.n_q or card["n_q"]
    if n_q > card["n_q"]:
        raise ValueError(f"{run.codec} has {card['n_q']} codebooks in the shards, {n_q} asked")
    frames = manifest["frames"]
    model = dict(run.model)
    if "max_len" not in model:  # room for a crop and as much again of voice prompt
        T = int(np.ceil(run.train.crop_seconds * card["frame_rate"]))
        steps = T + n_q - 1 if run.pattern == "delay" else T * n_q
        model["max_len"] = 2 * (int(np.ceil(run.train.crop_seconds * sem["frame_rate"])) + 1 + steps)
    if run.dedup:  # no duration model: a deduplicated unit lasts the training data's mean run length
        samples = chain.from_iterable(map(read_shards, run.shards))
        per_unit = frames_per_dedup_unit(samples, sem_name, codec_name)
    else:
        per_unit = frames[codec_name] / max(1, frames[sem_name])
    return AcousticConfig(k=sem["k"], n_q=n_q, codebook_size=card["codebook_size"], pattern=run.pattern,
                          n_coarse=run.n_coarse, semantic_rate=sem["frame_rate"], codec_rate=card["frame_rate"],
                          frames_per_unit=per_unit, dedup=run.dedup, unit_stream=unit_stream(sem, run.dedup),
                          semantic_stream=sem_name, codec_stream=codec_name, codec_card=card, **model)


def batches(run: AcousticRun, cfg: AcousticConfig, rank: int, world: int, skip: int):
    """Endless batches of (units, steps) lists; the first `skip` are passed over (resume)."""
    paths = shard_paths(run.shards)
    tc = run.train
    crop = int(tc.crop_seconds * cfg.codec_rate)
    n = 0
    epoch_rng = lambda epoch: np.random.default_rng([tc.seed, epoch, rank])  # noqa: E731
    for rng, samples in shuffled_epochs(paths, rank, world, tc.shuffle_buffer, epoch_rng):
        batch = []
        for sample in samples:
            batch.append(pair(sample, cfg, crop, rng))
            if len(batch) == tc.batch_size:
                n += 1
                if n > skip:
                    yield batch
                batch = []


def train_acoustic(run: AcousticRun, stop_after: int | None = None) -> dict:
    tc = run.train
    rank, world, device = init_distributed()
    out = Path(run.output)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    cfg = acoustic_config(run)
    raw = AcousticModel(cfg).to(device)
    model = parallelize(raw, "auto", world, device, tc.precision)
    optimizer = build_optimizer(model, tc, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, tc) / tc.lr)
    step = load_checkpoint(out, model, optimizer, scheduler, rank, world)
    metrics = Metrics(out, rank, step)
    data = batches(run, cfg, rank, world, skip=step)

    def autocast():
        if tc.precision == "bf16" and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    first, last = step, {}
    model.train()
    while step < tc.steps and (stop_after is None or step - first < stop_after):
        batch = next(data)
        units = [torch.as_tensor(u, device=device) for u, _ in batch]
        steps = [torch.as_tensor(s, device=device) for _, s in batch]
        with autocast():
            loss = model(units, steps)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % tc.log_every == 0 or step == tc.steps:
            last = {"loss": loss.detach().item(), "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)}
            metrics.log(step, last)
            if rank == 0:
                print(f"step {step}/{tc.steps} loss {last['loss']:.4f}", flush=True)
        stopping = stop_after is not None and step - first >= stop_after
        if step % tc.save_every == 0 or step == tc.steps or stopping:
            save_checkpoint(out, step, model, optimizer, scheduler, rank, world, tc.keep_checkpoints)
    if step >= tc.steps and rank == 0:
        raw.save(out / "final")
    return {"step": step, **last}
