"""The F0 input of an F0-conditioned unit HiFi-GAN: per unit frame, normalised log-F0 (0 where unvoiced) and
the voiced flag. speech-resynthesis feeds VQ-VAE codes of F0 normalised per speaker; here F0 stays continuous
and is normalised per utterance (`mean`, `meanstd`: the pitch level then comes from the speaker embedding)
or not at all (`none`: log-F0 around F0_REFERENCE, so a shifted contour is heard shifted). Unit frame j
(rate r_u) reads the F0 frame (rate r_f) under its centre: floor((j + 1/2) · r_f / r_u)."""

from __future__ import annotations

import numpy as np

from speechtok.prosody.normalize import NORMS, normalize

F0_CHANNELS = 2  # normalised log-F0, voiced flag
F0_NORMS = NORMS
F0_REFERENCE = 150.0  # Hz: `none` is log(F0 / F0_REFERENCE)
F0_SOURCES = ("", "harmonic")  # `f0_source`: none, or the sine excitation of harmonic_source.py


def check_f0_source(f0_source: str | None, f0: str | None, f0_norm: str) -> None:
    """A ValueError naming `f0_source` unless it is known and, for the harmonic excitation, the F0 input
    is in Hz (an F0 stream, `f0_norm: none`). Torch-free: the trainer's config checks it early too."""
    if (f0_source or "") not in F0_SOURCES:
        raise ValueError(f"f0_source: '' or 'harmonic', not {f0_source!r}")
    if f0_source and (not f0 or f0_norm != "none"):
        raise ValueError("f0_source: harmonic reads F0 in Hz, so it needs F0 in Hz: f0 (an F0 stream) "
                         "with f0_norm none")


def f0_features(f0_hz: np.ndarray, norm: str) -> np.ndarray:
    """F0 in Hz per frame (0: unvoiced) → [F0_CHANNELS, T] float32, statistics over the whole contour."""
    x = normalize(f0_hz, norm)
    if norm == "none":
        x = x - np.log(F0_REFERENCE)
    voiced = ~np.isnan(x)
    return np.stack([np.where(voiced, x, 0.0), voiced]).astype(np.float32)


def pick_frames(features: np.ndarray, index: np.ndarray) -> np.ndarray:
    """features[:, index], all zeros (unvoiced) where the index is past the contour."""
    out = np.zeros((features.shape[0], len(index)), dtype=np.float32)
    inside = index < features.shape[1]
    out[:, inside] = features[:, index[inside]]
    return out


def at_unit_frames(features: np.ndarray, f0_rate: float, unit_rate: float, n: int) -> np.ndarray:
    """F0 features at `f0_rate` → the `n` frames of units at `unit_rate` (the F0 frame under each centre)."""
    return pick_frames(features, np.floor((np.arange(n) + 0.5) * f0_rate / unit_rate).astype(np.int64))


def stretch(features: np.ndarray, n: int) -> np.ndarray:
    """A contour time-stretched onto `n` frames (F0 of another utterance, or units expanded by predicted
    durations), nearest frame."""
    if features.shape[1] == n:
        return features
    return pick_frames(features, np.floor((np.arange(n) + 0.5) * features.shape[1] / n).astype(np.int64))


def f0_input(f0_hz: np.ndarray, f0_rate: float, unit_rate: float, n: int, norm: str) -> np.ndarray:
    """F0 in Hz of a whole utterance → the vocoder's input for its `n` unit frames."""
    return at_unit_frames(f0_features(f0_hz, norm), f0_rate, unit_rate, n)
