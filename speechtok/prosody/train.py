"""`tok prosody train`: pitch tokenizers fitted on the F0 stream of shards (`tok encode -t f0:...` computed it
once for the corpus): equal-mass bins of normalised log-F0 (pGSLM) or the F0 VQ-VAE (speech-resynthesis,
Spirit-LM). The tokenizer keeps the stream's tracker settings, so `tok encode -t DIR` computes the same F0 on
new audio; per-speaker log-F0 statistics of the training shards are recorded in its card."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from speechtok.prosody.f0_tokenizer import f0_from_card, from_decihertz
from speechtok.prosody.normalize import normalize, speaker_stats
from speechtok.shards import read_manifest, read_shards


def read_f0_stream(shards: str | Path, stream: str) -> tuple[dict, list[np.ndarray], list[str]]:
    """(the stream's card, F0 in Hz per utterance, speaker per utterance ('' when unlabelled))."""
    _, manifest = read_manifest(shards)
    card = manifest["tokenizers"].get(stream)
    if card is None or card.get("type") != "f0":
        f0_streams = [k for k, c in manifest["tokenizers"].items() if c.get("type") == "f0"]
        raise ValueError(f"{shards}: no F0 stream {stream!r} (F0 streams: {f0_streams or 'none'}; "
                         "write one with tok encode -t f0:TRACKER)")
    if card.get("norm") == "speaker":
        raise ValueError(f"{shards}: F0 stream {stream!r} is normalised per speaker; this reads F0 in Hz "
                         "(tok encode -t f0:TRACKER without stats=)")
    contours, speakers = [], []
    for sample in read_shards(shards):
        contours.append(from_decihertz(sample[stream]))
        speakers.append(str(sample.get("speaker") or ""))
    return card, contours, speakers


def speaker_record(contours: list[np.ndarray], speakers: list[str]) -> dict:
    """Per speaker, the mean and std of log-F0 (speech-resynthesis normalises per speaker with them)."""
    return {s: {"logf0_mean": m, "logf0_std": d} for s, (m, d) in
            sorted(speaker_stats(zip(speakers, contours)).items()) if s and np.isfinite(m)}


def train_bins(shards: str | Path, out: str | Path, stream: str = "f0", bins: int = 32, norm: str = "mean"):
    """Fit pGSLM's equal-mass bins on the utterance-normalised log-F0 of every voiced frame and save."""
    from speechtok.prosody.load import save_card
    from speechtok.prosody.pitch_bins import PitchBins, fit_bins

    card, contours, speakers = read_f0_stream(shards, stream)
    values = np.concatenate([normalize(c, norm) for c in contours])
    edges, medians = fit_bins(values, bins)
    tok = PitchBins(f0_from_card(card), norm, edges, medians,
                    {"trained_on": {"frames": int((~np.isnan(values)).sum()), "utterances": len(contours)},
                     "speakers": speaker_record(contours, speakers)})
    save_card(tok, out)
    return tok


def train_vqvae(shards: str | Path, out: str | Path, stream: str = "f0", steps: int = 2000, codes: int = 64,
                batch_size: int = 32, seed: int = 0, device: str = "cpu", log=print):
    """Train the F0 VQ-VAE on a 200 Hz F0 stream and save it as a pitch tokenizer; checkpoints in
    `out/checkpoints` until it is saved, so that a run stopped by a signal resumes."""
    from speechtok.prosody import f0_vqvae

    card, contours, speakers = read_f0_stream(shards, stream)
    if card["frame_rate"] != 200.0:
        raise ValueError(f"{shards}: the F0 VQ-VAE trains on F0 at 200 Hz (tok encode -t "
                         f"f0:TRACKER:rate=200), stream {stream!r} is at {card['frame_rate']:g} Hz")
    cfg = f0_vqvae.VQVAEConfig(codes=codes)
    model, losses = f0_vqvae.train_vqvae(contours, cfg, steps=steps, batch_size=batch_size, seed=seed,
                                         device=device, log=log, run_dir=Path(out))
    tok = f0_vqvae.PitchVQVAE(f0_from_card(card), model.cpu(),
                              {"trained_on": {"utterances": len(contours), **losses, "seed": seed},
                               "speakers": speaker_record(contours, speakers)})
    tok.save(out)
    shutil.rmtree(Path(out) / "checkpoints", ignore_errors=True)  # the tokenizer is whole: no resume left
    return tok
