"""`tok acoustic train CONFIG`: train the semantic → codec-token model on shards that hold both streams.

    output: runs/acoustic
    shards: [shards/manifest.json]        # written by `tok encode -t KM -t encodec:...`
    codec: encodec                        # the codec stream to model
    n_q: 8
    pattern: delay                        # or coarse_fine (with n_coarse), valle (AR + NAR), or depth
                                          # (acoustic_delay, codebook_weights, text_stream:
                                          # lm/acoustic_depth.py)
    model: {dim: 512, layers: 8, heads: 8}
    train: {batch_size: 16, steps: 20000, lr: 3.0e-4, warmup: 500, crop_seconds: 10}

Uses the shared trainer core (speechtok/training): config checks, the shard stream, DCP checkpoints
(resume by rerunning, also on another world size), LR schedule and metrics."""

from __future__ import annotations

from itertools import chain
from pathlib import Path

import numpy as np
import torch

from speechtok.checksums import write_checksums
from speechtok.lm.acoustic import AcousticConfig, acoustic_model, frames_per_dedup_unit, to_steps
from speechtok.lm.acoustic_config import AcousticRun, checked_streams
from speechtok.lm.parallel import init_distributed, parallelize
from speechtok.lm.vocab import speech_streams
from speechtok.shards import read_shards
from speechtok.tokenizers.semantic import run_length
from speechtok.training.checkpoint import load_checkpoint, save_checkpoint
from speechtok.training.config import ConfigError
from speechtok.training.loop import (Guard, Metrics, autocast_for, build_optimizer, check_schedule, lr_at,
                                     schedule_of, seed_all, set_lr, training_run)
from speechtok.training.stream import Position, part_stream, resume_position, shard_source
from speechtok.unit_stream import unit_stream


def pair(sample: dict, cfg: AcousticConfig, crop_frames: int,
         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
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
    steps = to_steps(cfg, codes[:, a:b])
    if cfg.text_stream:
        from speechtok.lm.acoustic_depth import text_frames, with_text

        steps = with_text(cfg, steps, text_frames(cfg, sample.get("words"), T)[a:b])
    return sem.astype(np.int64), steps


def acoustic_config(run: AcousticRun) -> AcousticConfig:
    """The model config from the shards' tokenizer cards and the run's choices."""
    manifest, n_q = checked_streams(run)
    sem_name, sem, codec_name, card = speech_streams(manifest, run.codec, run.stream)
    frames = manifest["frames"]
    model = dict(run.model)
    if run.dedup:  # no duration model: a deduplicated unit lasts the training data's mean run length
        samples = chain.from_iterable(map(read_shards, run.shards))
        per_unit = frames_per_dedup_unit(samples, sem_name, codec_name)
    else:
        per_unit = frames[codec_name] / max(1, frames[sem_name])
    if run.pattern == "depth":
        model.update(acoustic_delay=run.acoustic_delay, codebook_weights=run.codebook_weights,
                     text_stream=run.text_stream, text_tokenizer=run.text_tokenizer)
        if run.text_stream:
            from speechtok.lm.acoustic_depth import text_tokens

            model["text_vocab"] = text_tokens(run.text_tokenizer).vocab
            if not any(s.get("words") for s in chain.from_iterable(map(read_shards, run.shards))):
                raise ValueError("text_stream: no utterance of the shards has word timings (`words`: from "
                                 "the corpus manifest or `tok align`); the text stream would learn nothing")
    try:
        cfg = AcousticConfig(k=sem["k"], n_q=n_q, codebook_size=card["codebook_size"], pattern=run.pattern,
                             n_coarse=run.n_coarse, semantic_rate=sem["frame_rate"],
                             codec_rate=card["frame_rate"], frames_per_unit=per_unit, dedup=run.dedup,
                             unit_stream=unit_stream(sem, run.dedup),
                             semantic_stream=sem_name, codec_stream=codec_name, codec_card=card, **model)
    except TypeError as e:
        raise ConfigError(f"model: {e}") from None
    if "max_len" not in model:  # room for a crop and as much again of voice prompt
        crop = [int(np.ceil(run.train.crop_seconds * s["frame_rate"])) for s in (sem, card)]
        cfg.max_len = 2 * (cfg.positions(*crop) + 1)
    return cfg


def batches(run: AcousticRun, cfg: AcousticConfig, rank: int, world: int, position: Position, skip: int,
            consumed: dict):
    """Endless batches of (units, steps) lists from this rank's part of the shard stream; the first `skip`
    are passed over (resume). `consumed["speech"]` counts the samples drawn."""
    tc = run.train
    src = shard_source(run.shards)
    crop = int(tc.crop_seconds * cfg.codec_rate)
    rng = np.random.default_rng([tc.seed, position.origin_step, rank])  # crops
    consumed.setdefault(src.name, 0)
    n, batch = 0, []
    for sample in part_stream(src, tc.seed, rank, world, 0, 1, tc.shuffle_buffer, position.start(src)):
        consumed[src.name] += 1
        batch.append(pair(sample, cfg, crop, rng))
        if len(batch) == tc.batch_size:
            n += 1
            if n > skip:
                yield batch
            batch = []


def train_acoustic(run: AcousticRun, stop_after: int | None = None, device: str = "auto") -> dict:
    """Train as configured, resuming from `run.output`'s checkpoint; `stop_after` and `device` as for
    lm.train.train (signals and non-finite numbers too)."""
    rank, world, device = init_distributed(device)
    with training_run(world) as stop:
        return _train(run, stop_after, rank, world, device, stop)


def _train(run: AcousticRun, stop_after: int | None, rank: int, world: int, device: torch.device,
           stop) -> dict:
    tc = run.train
    out = Path(run.output)
    out.mkdir(parents=True, exist_ok=True)
    seed_all(tc.seed)
    cfg = acoustic_config(run)
    raw = acoustic_model(cfg).to(device)
    model = parallelize(raw, "auto", world, device, tc.precision)
    optimizer = build_optimizer(model, tc, device)
    parts = {"acoustic": (model, optimizer)}
    meta = load_checkpoint(out, parts, rank) or {}
    check_schedule(meta, tc, "train.")
    step = meta.get("step", 0)
    metrics = Metrics(out, rank, step, tc.steps)
    guard = Guard(stop, out, world, device)
    position = resume_position(meta.get("position"), step, world, 1, f"{out}: ")
    consumed: dict[str, int] = {}
    data = batches(run, cfg, rank, world, position, step - position.origin_step, consumed)
    autocast = autocast_for(tc.precision if device.type == "cuda" else "fp32", device)

    first, last, signum = step, {}, guard.stop_signal()
    model.train()
    while step < tc.steps and (stop_after is None or step - first < stop_after) and not signum:
        batch = next(data)
        units = [torch.as_tensor(u, device=device) for u, _ in batch]
        steps = [torch.as_tensor(s, device=device) for _, s in batch]
        lr = set_lr(optimizer, lr_at(step, tc))
        with autocast():
            loss = model(units, steps)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        guard.watch(loss=loss, grad_norm=grad_norm)
        step += 1
        if step % tc.log_every == 0 or step == tc.steps:
            guard.check(step)
            last = {"loss": loss.detach().item(), "lr": lr, "grad_norm": float(grad_norm)}
            metrics.log(step, last)
        signum = guard.stop_signal()
        stopping = (stop_after is not None and step - first >= stop_after) or signum
        if step % tc.save_every == 0 or step == tc.steps or stopping:
            guard.check(step, [model])
            save_checkpoint(out, step, parts, {"position": position.saved(consumed, world, device),
                                               "schedule": schedule_of(tc)}, rank, world, tc.keep_checkpoints)
    if signum:
        raise guard.interrupted(signum, step, first)
    if step >= tc.steps:
        guard.check(step, [model])
    if step >= tc.steps and rank == 0:
        raw.save(out / "final")
        write_checksums(out / "final")
        metrics.finished(out / "final")
    return {"step": step, **last}
