"""Normalised log-F0, as pGSLM quantizes it (`--normalize mean --log`: log-F0 minus the speaker's mean) and
speech-resynthesis conditions on it (mean/std per speaker): statistics over voiced frames only, unvoiced
frames stay unvoiced. Per utterance at encode time (a tokenizer sees no speaker labels), per speaker from
labelled corpora (`speaker_stats`)."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np

NORMS = ("none", "mean", "meanstd")
CENTS_PER_NEPER = 1200.0 / np.log(2.0)  # log-F0 differences in cents


def log_f0(f0: np.ndarray) -> np.ndarray:
    """Natural log of the voiced frames' F0, NaN where unvoiced (F0 0)."""
    f0 = np.asarray(f0, dtype=np.float64)
    return np.where(f0 > 0, np.log(np.maximum(f0, 1e-12)), np.nan)


def stats(f0: np.ndarray) -> tuple[float, float]:
    """(mean, std) of the voiced frames' log-F0; (nan, nan) without voiced frames."""
    x = log_f0(f0)
    x = x[~np.isnan(x)]
    return (float(x.mean()), float(x.std())) if len(x) else (float("nan"), float("nan"))


def speaker_stats(pairs: Iterable[tuple[str, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """(speaker, F0 contour) pairs → per speaker the (mean, std) of log-F0 over all its voiced frames."""
    by_speaker: dict[str, list[np.ndarray]] = defaultdict(list)
    for speaker, f0 in pairs:
        by_speaker[speaker].append(np.asarray(f0))
    return {s: stats(np.concatenate(f)) for s, f in by_speaker.items()}


def normalize(f0: np.ndarray, norm: str, mean_std: tuple[float, float] | None = None) -> np.ndarray:
    """Log-F0 minus the mean (`mean`), also over the std (`meanstd`), or as is (`none`); NaN where unvoiced.
    `mean_std` defaults to the utterance's own statistics."""
    if norm not in NORMS:
        raise ValueError(f"unknown F0 normalisation {norm!r} (one of {', '.join(NORMS)})")
    x = log_f0(f0)
    if norm == "none":
        return x
    mean, std = stats(f0) if mean_std is None else mean_std
    x = x - mean
    return x / max(std, 1e-6) if norm == "meanstd" else x


def denormalize(x: np.ndarray, norm: str, mean_std: tuple[float, float]) -> np.ndarray:
    """`normalize`'s inverse: normalised log-F0 (NaN where unvoiced) → log-F0, given the level (mean, std)
    to put back (`none`: x is log-F0 already)."""
    x = np.asarray(x, dtype=np.float64)
    if norm == "none":
        return x
    mean, std = mean_std
    return (x * std if norm == "meanstd" else x) + mean
