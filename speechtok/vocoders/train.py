"""`tok vocoder train`: GAN training of a unit HiFi-GAN or a Vocos on shards and the corpus audio they
came from. Generator and discriminators alternate each step with the paper's discriminators and losses
(losses.py: HiFi-GAN's or Vocos'); checkpoints resume exactly (both models and optimizers, step, RNG; the
data stream is replayed); losses go to TensorBoard and metrics.jsonl; (original, resynthesized) audio and
mel plots are saved at intervals. Config, stream, checkpoints, schedule and metrics come from the trainer
core (speechtok/training)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from speechtok.audio import load_utterance
from speechtok.checksums import verify_checksums, write_checksums
from speechtok.corpus import load_corpus
from speechtok.prosody.f0_tokenizer import from_decihertz
from speechtok.shards import read_manifest
from speechtok.training.checkpoint import load_checkpoint, save_checkpoint
from speechtok.training.loop import Guard, Metrics, check_schedule, lr_at, schedule_of, set_lr, training_run
from speechtok.training.stream import Position, Source, part_stream, resume_position, shard_source
from speechtok.unit_stream import unit_stream
from speechtok.vocoders.f0_input import f0_input, pick_frames
from speechtok.vocoders.hifigan import UnitHiFiGAN, UnitHiFiGANConfig, is_original_dir
from speechtok.vocoders.losses import vocoder_loss
from speechtok.vocoders.train_config import (VOCOS_CODEC_SIZES, VOCOS_MEL_SIZES, VOCOS_SIZES,
                                             VocoderTrainConfig, check_f0_stream, vocoded_stream)
from speechtok.vocoders.vocos import Vocos


def upsample_plan(hop: int) -> list[int]:
    """Upsampling factors (5, 4, 3, 2 first) whose product is `hop`."""
    rates, rest = [], hop
    for f in (5, 4, 3, 2):
        while rest % f == 0:
            rates.append(f)
            rest //= f
    if rest != 1:
        raise ValueError(f"hop {hop} is not a product of 2, 3, 4 and 5")
    return rates


def build_generator(cfg: VocoderTrainConfig, manifest: dict, speakers: list[str]):
    """(generator, sample rate, hop, stream name or None) for the run."""
    cards = manifest["tokenizers"]
    name = vocoded_stream(cfg, cards)
    if cfg.kind == "unit-hifigan":
        card = cards[name]
        hop = int(round(card["sample_rate"] / card["frame_rate"]))
        rates = cfg.model.get("upsample_rates") or upsample_plan(hop)
        args = {"upsample_kernel_sizes": [2 * r for r in rates], **cfg.model, "upsample_rates": rates}
        gcfg = UnitHiFiGANConfig(k=card["k"], sample_rate=card["sample_rate"], frame_rate=card["frame_rate"],
                                 dedup=cfg.dedup, num_speakers=len(speakers), speakers=speakers,
                                 unit_stream=unit_stream(card, cfg.dedup), **f0_settings(cfg, cards), **args)
        return UnitHiFiGAN(gcfg), gcfg.sample_rate, gcfg.hop, name
    m = {**VOCOS_SIZES, **cfg.model}
    if name is None:  # mel
        sr = cfg.sample_rate or 24000
        n_fft, hop, n_mels = (m.pop(k, v) for k, v in VOCOS_MEL_SIZES.items())
        config = {"feature_extractor": {"class_path": "vocos.feature_extractors.MelSpectrogramFeatures",
                                        "init_args": {"sample_rate": sr, "n_fft": n_fft, "hop_length": hop,
                                                      "n_mels": n_mels, "padding": "center"}},
                  "backbone": {"class_path": "vocos.models.VocosBackbone",
                               "init_args": {"input_channels": n_mels, **m}},
                  "head": {"class_path": "vocos.heads.ISTFTHead",
                           "init_args": {"dim": m["dim"], "n_fft": n_fft, "hop_length": hop,
                                         "padding": "center"}}}
        return Vocos(config), sr, hop, None
    card = cards[name]
    sr, hop = card["sample_rate"], card["hop_length"]
    feat_dim = m.pop("feature_dim", VOCOS_CODEC_SIZES["feature_dim"])
    config = {"feature_extractor": {"class_path": "vocos.feature_extractors.EncodecFeatures",
                                    "init_args": {"codebook_size": card["codebook_size"], "n_q": card["n_q"],
                                                  "dim": feat_dim, "train_codebooks": True,
                                                  "sample_rate": sr}},
              "backbone": {"class_path": "vocos.models.VocosBackbone",
                           "init_args": {"input_channels": feat_dim, **m}},
              "head": {"class_path": "vocos.heads.ISTFTHead",
                       "init_args": {"dim": m["dim"], "n_fft": 4 * hop, "hop_length": hop,
                                     "padding": "same"}}}
    return Vocos(config), sr, hop, name


def f0_settings(cfg: VocoderTrainConfig, cards: dict) -> dict:
    """The F0 fields of an F0-conditioned unit HiFi-GAN's config (none without `f0:`)."""
    if not cfg.f0:
        return {}
    check_f0_stream(cfg, cards)
    return {"f0": cfg.f0, "f0_norm": cfg.f0_norm, "f0_card": cards[cfg.f0], "f0_source": cfg.f0_source or ""}


def segment_f0(cfg: VocoderTrainConfig, s: dict, f0_rate: float, unit_rate: float,
               total: int) -> np.ndarray | None:
    """The F0 input [F0_CHANNELS, total] of a whole sample at the unit frames (None without `f0:`)."""
    if not cfg.f0:
        return None
    return f0_input(from_decihertz(s[cfg.f0]), f0_rate, unit_rate, total, cfg.f0_norm)


def segments(cfg: VocoderTrainConfig, src: Source, utts: dict, stream: str | None, sr: int, hop: int,
             speakers: list[str], skip: int, position: Position | None = None, consumed: dict | None = None,
             f0_rate: float = 0.0):
    """Endless batches (inputs, audio [B, frames × hop], speakers, F0 input or None) of random segments of
    the utterances in `utts` (id → Utterance) listed by the shards of `src`; the first `skip` batches are
    replayed without loading audio (resume); `f0_rate`: the frame rate of the `f0:` stream."""
    position = position or Position(1, 1)
    consumed = {} if consumed is None else consumed
    consumed.setdefault(src.name, 0)
    n = max(1, int(cfg.segment_seconds * sr / hop))
    count = 0
    rng = np.random.default_rng([cfg.seed, position.origin_step])  # segment starts
    batch = []
    for s in part_stream(src, cfg.seed, 0, 1, 0, 1, cfg.shuffle_buffer, position.start(src)):
        consumed[src.name] += 1
        if s["id"] not in utts:
            continue
        frames = s[stream] if stream else None
        if stream and s.get(stream + "_durations") is not None:
            frames = np.repeat(frames, s[stream + "_durations"])
        total = frames.shape[-1] if frames is not None else int(s["duration"] * sr) // hop
        a = int(rng.integers(0, max(1, total - n + 1)))
        batch.append((s, frames, a, segment_f0(cfg, s, f0_rate, sr / hop, total)))
        if len(batch) < cfg.batch_size:
            continue
        count += 1
        if count > skip:
            yield _load_batch(batch, utts, n, sr, hop, speakers)
        batch = []


def _load_batch(batch, utts, n: int, sr: int, hop: int, speakers: list[str]):
    inputs, audio, spk, f0 = [], [], [], []
    for s, frames, a, f0_full in batch:
        wav = load_utterance(utts[s["id"]], sr)
        seg = np.zeros(n * hop, dtype=np.float32)
        part = wav[a * hop: (a + n) * hop]
        seg[: len(part)] = part
        audio.append(seg)
        if frames is not None:
            f = frames[..., a: a + n]
            pad = n - f.shape[-1]
            f = (np.pad(f.astype(np.int64), [(0, 0)] * (f.ndim - 1) + [(0, pad)], mode="edge") if pad
                 else f.astype(np.int64))
            inputs.append(f)
        spk.append(speakers.index(s["speaker"]) if speakers and s.get("speaker") in speakers else 0)
        if f0_full is not None:  # unvoiced past the end, like the audio's zeros
            f0.append(pick_frames(f0_full, np.arange(a, a + n)))
    x = torch.from_numpy(np.stack(inputs)) if inputs else None
    f0_batch = torch.from_numpy(np.stack(f0)) if f0 else None
    return x, torch.from_numpy(np.stack(audio)), torch.tensor(spk), f0_batch


def synthesize(gen, x: torch.Tensor | None, audio: torch.Tensor, speakers: torch.Tensor,
               f0: torch.Tensor | None = None) -> torch.Tensor:
    """Generator output for one batch, cut to the audio's length."""
    if isinstance(gen, UnitHiFiGAN):
        y = gen(x, speakers if gen.cfg.num_speakers else None, f0)
    elif gen.is_codec:
        y = gen.decode(gen.feature_extractor(x.transpose(0, 1)))
    else:
        y = gen(audio)
    if y.shape[-1] < audio.shape[-1]:
        y = torch.nn.functional.pad(y, (0, audio.shape[-1] - y.shape[-1]))
    return y[..., : audio.shape[-1]]


def save_generator(gen, directory: Path) -> None:
    """The final vocoder, with the sha256 of its files (verified by load_vocoder)."""
    if isinstance(gen, UnitHiFiGAN):
        gen.save(directory)
    else:
        gen.save_pretrained(directory)
    write_checksums(directory)


def save_samples(out: Path, step: int, gen, batch, sr: int, writer) -> None:
    """The first item of a fixed batch: original and resynthesized wav, and their mel spectrograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import soundfile as sf

    from speechtok.vocoders.mel import MelSpectrogram, log_mel

    x, audio, spk, f0 = batch
    gen.eval()
    with torch.no_grad():
        y = synthesize(gen, x[:1] if x is not None else None, audio[:1], spk[:1],
                       f0[:1] if f0 is not None else None)[0]
    gen.train()
    d = out / "samples" / f"step_{step:07d}"
    d.mkdir(parents=True, exist_ok=True)
    sf.write(d / "original.wav", audio[0].numpy(), sr)
    sf.write(d / "resynthesized.wav", y.numpy(), sr)
    mel = MelSpectrogram(sr, 1024 if sr > 16000 else 512, 256 if sr > 16000 else 128, 80)
    fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    for ax, wav, title in zip(axes, (audio[0], y), ("original", "resynthesized")):
        ax.imshow(log_mel(mel, wav[None])[0].numpy(), origin="lower", aspect="auto")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(d / "mel.png", dpi=80)
    if writer is not None:
        writer.add_figure("mel", fig, step)
        writer.add_audio("resynthesized", y[None], step, sr)
    plt.close(fig)


MIN_SEGMENT_SAMPLES = 1025  # the 1024-point mel loss and Vocos' 2048-point MRD pad by up to 1024 samples


def check_segment(seconds: float, sr: int, hop: int) -> None:
    """A ValueError naming segment_seconds when a training segment (whole frames of `hop` samples) is too
    short for the mel loss and the discriminators (a padding traceback at the first step otherwise)."""
    samples = max(1, int(seconds * sr / hop)) * hop
    if samples < MIN_SEGMENT_SAMPLES:
        least = -(-MIN_SEGMENT_SAMPLES // hop) * hop / sr
        raise ValueError(f"segment_seconds: {seconds:g} s is {samples} samples at {sr} Hz; the mel loss "
                         f"and discriminators need at least {MIN_SEGMENT_SAMPLES} (segment_seconds "
                         f"{least:.3f} or more)")


def train_vocoder(cfg: VocoderTrainConfig, stop_after: int | None = None, device: str = "cpu") -> dict:
    """Train as configured, resuming from `cfg.output`'s checkpoint; `stop_after`, signals and non-finite
    numbers as for lm.train.train."""
    with training_run(1) as stop:
        return _train(cfg, stop_after, torch.device(device), stop)


def _train(cfg: VocoderTrainConfig, stop_after: int | None, device: torch.device, stop) -> dict:
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    _, manifest = read_manifest(cfg.shards)
    utts = {u.id: u for u in load_corpus(manifest["corpus"])}
    speakers = sorted({u.speaker for u in utts.values() if u.speaker}) if cfg.speakers else []
    gen, sr, hop, stream = build_generator(cfg, manifest, speakers)
    check_segment(cfg.segment_seconds, sr, hop)
    disc = vocoder_loss(cfg.kind, sr, stream is not None and cfg.kind == "vocos", cfg.disc_channels,
                        cfg.mel_weight,
                        cfg.fm_weight, cfg.mrd_weight)  # the paper's discriminators and losses
    gen, disc = gen.to(device), disc.to(device)
    opt_g = torch.optim.AdamW(gen.parameters(), cfg.lr, betas=cfg.betas)
    opt_d = torch.optim.AdamW(disc.parameters(), cfg.lr, betas=cfg.betas)
    parts = {"generator": (gen, opt_g), "discriminators": (disc, opt_d)}
    meta = load_checkpoint(out, parts, 0) or {}
    check_schedule(meta, cfg, "")
    step = meta.get("step", 0)
    metrics = Metrics(out, 0, step, cfg.steps)
    guard = Guard(stop, out, 1, device)
    src = shard_source([cfg.shards])  # every shard verified once, before training reads it
    f0_rate = manifest["tokenizers"][cfg.f0]["frame_rate"] if cfg.f0 else 0.0
    fixed = next(segments(cfg, src, utts, stream, sr, hop, speakers, 0, f0_rate=f0_rate))
    position = resume_position(meta.get("position"), step, 1, 1, f"{out}: ")
    consumed: dict[str, int] = {}
    data = segments(cfg, src, utts, stream, sr, hop, speakers, step - position.origin_step, position,
                    consumed, f0_rate)
    first, last, t0, signum = step, {}, time.perf_counter(), guard.stop_signal()
    while step < cfg.steps and (stop_after is None or step - first < stop_after) and not signum:
        x, audio, spk, f0 = next(data)
        x = x.to(device) if x is not None else None
        f0 = f0.to(device) if f0 is not None else None
        audio, spk = audio.to(device), spk.to(device)
        y_hat = synthesize(gen, x, audio, spk, f0)
        adversarial = step >= cfg.adv_start
        lr = set_lr(opt_g, lr_at(step, cfg))
        # the discriminators' schedule starts with them
        set_lr(opt_d, lr_at(max(0, step - cfg.adv_start), cfg))
        loss_d = torch.zeros((), device=device)
        if adversarial:
            loss_d = disc.discriminator_loss(audio, y_hat.detach())
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        loss_g, loss_mel = disc.generator_loss(audio, y_hat, adversarial)
        if isinstance(gen, UnitHiFiGAN) and gen.cfg.dedup:  # the duration predictor learns the run lengths
            loss_g = loss_g + gen.duration_loss(x)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        guard.watch(g_loss=loss_g, d_loss=loss_d)
        step += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            guard.check(step)
            dt = time.perf_counter() - t0
            last = {"mel_loss": loss_mel.item(), "g_loss": loss_g.item(), "d_loss": loss_d.item(),
                    "lr": lr, "steps_per_s": cfg.log_every / dt}
            metrics.log(step, last)
            t0 = time.perf_counter()
        if step % cfg.sample_every == 0 or step == cfg.steps:
            save_samples(out, step, gen, fixed, sr, metrics.tb)
        signum = guard.stop_signal()
        stopping = (stop_after is not None and step - first >= stop_after) or signum
        if step % cfg.save_every == 0 or step == cfg.steps or stopping:
            guard.check(step, [gen, disc])
            save_checkpoint(out, step, parts, {"position": position.saved(consumed, 1, device),
                                               "schedule": schedule_of(cfg)}, 0, 1, cfg.keep_checkpoints)
    if signum:
        raise guard.interrupted(signum, step, first)
    if step >= cfg.steps:
        guard.check(step, [gen])
        save_generator(gen.eval(), out / "final")
        metrics.finished(out / "final")
    return {"step": step, **last}


def load_vocoder(directory: str | Path, device: str | torch.device = "cpu"):
    """A unit HiFi-GAN (ours: vocoder.json; the original's: config.json + g_XXXXXXXX) or a Vocos
    (config.yaml)."""
    d = Path(directory)
    if d.is_dir():
        verify_checksums(d)
    ours = ((d / "vocoder.json").exists()
            and json.loads((d / "vocoder.json").read_text()).get("kind") == "unit-hifigan")
    if ours or is_original_dir(d):
        return UnitHiFiGAN.from_dir(d, device)
    if (d / "config.yaml").exists() or not d.exists():
        return Vocos.from_pretrained(directory, device)
    raise ValueError(f"{d}: neither a unit HiFi-GAN (vocoder.json, or config.json + g_XXXXXXXX) nor a Vocos "
                     "(config.yaml) directory")
