"""Codec tables (Codec-SUPERB / DASB style): codec specs with `nq=` sweeps, nominal and entropy bitrates,
and the timed round trip of one utterance through a `Codec`."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from speechtok.eval.tokens import Stream, TokenStats


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
    the rate an ideal entropy coder of independent codes would reach (never above the nominal one)."""

    def __init__(self, n_q: int, codebook_size: int, frame_rate: float):
        self.stats = TokenStats(Stream("codec", "codec", codebook_size, n_q, frame_rate))

    def add(self, codes: np.ndarray, seconds: float) -> None:
        self.stats.add(codes, seconds)

    def result(self) -> dict:
        r = self.stats.result()
        bits = [c["entropy_bits"] for c in r["codebooks"]]
        return {"entropy_bps": self.stats.stream.frame_rate * sum(bits), "entropy_bits": bits,
                "usage": [c["usage"] for c in r["codebooks"]]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_trip(codec, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """One utterance at the codec's rate → (codes [n_q, F], decoded audio cut to the input's length,
    encode seconds, decode seconds)."""
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
