"""Codec tables (Codec-SUPERB / DASB style): codec specs with `nq=` sweeps, nominal and entropy bitrates,
and the timed round trip of one utterance through a `Codec` or a tokenizer + vocoder (torch loads lazily, so
that the specs are checked first)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np


def expand_specs(specs: list[str]) -> list[str]:
    """`tok encode -t` codec specs, with an `nq=1,2,4` option expanded into one spec per value (in order)."""
    out: list[str] = []
    for spec in specs:
        parts = spec.split(":")
        sweep = [i for i, p in enumerate(parts) if i >= 2 and p.startswith("nq=") and "," in p]
        if not sweep:
            out.append(spec)
            continue
        i = sweep[-1]
        out += [":".join([*parts[:i], f"nq={v.strip()}", *parts[i + 1:]]) for v in parts[i][3:].split(",")
                if v.strip()]
    return out


def nominal_bps(n_q: int, codebook_size: int, frame_rate: float) -> float:
    """What the codes cost at a fixed length per code: n_q × log2(codebook size) × frame rate."""
    return n_q * math.log2(codebook_size) * frame_rate


class CodeEntropy:
    """Per-codebook unigram code counts over a corpus → entropy-based bitrate: frame rate × Σ_q H(codebook q),
    the rate an ideal entropy coder of independent codes would reach (never above the nominal one). With
    `dedup` (semantic units), also the run-length-deduplicated rates exactly as `tok eval tokens` reports them
    (deduplicated tokens per second × their unigram entropy)."""

    def __init__(self, n_q: int, codebook_size: int, frame_rate: float, dedup: bool = False):
        from speechtok.eval.tokens import Stream, TokenStats

        kind = "semantic" if dedup else "codec"
        self.stats = TokenStats(Stream(kind, kind, codebook_size, n_q, frame_rate))
        self.dedup = dedup

    def add(self, codes: np.ndarray, seconds: float) -> None:
        self.stats.add(codes, seconds)

    def result(self) -> dict:
        r = self.stats.result()
        bits = [c["entropy_bits"] for c in r["codebooks"]]
        dedup = ({k: r["bitrate"][k] for k in ("dedup_tokens_per_second", "dedup_entropy_bps")}
                 if self.dedup else {})
        return {"entropy_bps": self.stats.stream.frame_rate * sum(bits), "entropy_bits": bits,
                "usage": [c["usage"] for c in r["codebooks"]], **dedup}


def vocoder_sha256(directory: str) -> str | None:
    """sha256 of a vocoder's weights: ours, the original unit HiFi-GAN's g_XXXXXXXX, or a Vocos's
    pytorch_model.bin (local or in the hub cache); None when not found."""
    from speechtok.eval.models import files_sha256, hf_weights_sha256
    from speechtok.vocoders.hifigan import WEIGHTS_FILE, original_checkpoint

    d = Path(directory)
    for f in ((d / WEIGHTS_FILE, original_checkpoint(d), d / "pytorch_model.bin") if d.is_dir() else ()):
        if f is not None and f.is_file():
            return files_sha256([f])
    return hf_weights_sha256(str(directory))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_trip(codec, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """One utterance at the codec's rate → (codes [n_q, F], decoded audio cut to the input's length,
    encode seconds, decode seconds)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None]
    lengths = torch.tensor([x.shape[1]])
    _sync(codec.device)
    t0 = time.perf_counter()
    codes, frames = codec.encode(x, lengths)
    _sync(codec.device)
    t1 = time.perf_counter()
    audio, _ = codec.decode(codes, frames)
    _sync(codec.device)
    t2 = time.perf_counter()
    return (codes[0, :, : int(frames[0])].cpu().numpy(), audio[0, : x.shape[1]].float().cpu().numpy(),
            t1 - t0, t2 - t1)


def timed_resynthesis(route, wav: np.ndarray, sr: int) -> tuple[np.ndarray | None, np.ndarray, float, float]:
    """One utterance through a `pipelines.resynth.Resynthesis` (the `tok resynth` route) → (codes [n_q, F] or
    None for a mel, its output audio as `tok resynth` writes it, encode seconds, decode seconds)."""
    import torch

    from speechtok.audio import resample

    device = torch.device(route.device)
    x = resample(wav, sr, route.input_rate)
    _sync(device)
    t0 = time.perf_counter()
    tokens = route.encode(x, route.input_rate)
    _sync(device)
    t1 = time.perf_counter()
    audio = route.decode(tokens)
    _sync(device)
    return route.codes(tokens), audio, t1 - t0, time.perf_counter() - t1
