"""Voice activity detection for `tok segment`: Silero VAD (the `silero-vad` wheel ships its TorchScript
model), or a plain energy threshold when that package is missing or cannot run."""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000


class SileroVad:
    """Speech regions from Silero VAD at 16 kHz."""

    name = "silero"

    def __init__(self, min_silence: float = 0.1):
        import torch

        threads = torch.get_num_threads()
        try:
            from silero_vad import get_speech_timestamps, load_silero_vad
        finally:
            torch.set_num_threads(threads)  # importing silero_vad sets one thread for the whole process
        self.model, self.timestamps, self.min_silence = load_silero_vad(), get_speech_timestamps, min_silence

    def regions(self, wav: np.ndarray) -> list[tuple[float, float]]:
        import torch

        ts = self.timestamps(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)), self.model,
                             sampling_rate=SAMPLE_RATE, min_silence_duration_ms=int(self.min_silence * 1000),
                             speech_pad_ms=30, return_seconds=False)
        return [(t["start"] / SAMPLE_RATE, t["end"] / SAMPLE_RATE) for t in ts]


class EnergyVad:
    """Speech where the 30 ms frame energy is within 35 dB of the loud frames and 12 dB over the floor;
    gaps under `min_silence` are bridged and blips under 60 ms dropped."""

    name = "energy"

    def __init__(self, min_silence: float = 0.1, frame: float = 0.03):
        self.min_silence, self.frame = min_silence, frame

    def regions(self, wav: np.ndarray) -> list[tuple[float, float]]:
        n = int(self.frame * SAMPLE_RATE)
        frames = len(wav) // n
        if frames == 0:
            return []
        db = 10 * np.log10((wav[: frames * n].reshape(frames, n) ** 2).mean(1) + 1e-10)
        threshold = max(np.percentile(db, 95) - 35, np.percentile(db, 5) + 12)
        on = np.flatnonzero(np.diff(np.r_[0, (db > threshold).astype(int), 0]))
        regions = [(a * self.frame, b * self.frame) for a, b in zip(on[::2], on[1::2])]
        merged: list[tuple[float, float]] = []
        for a, b in regions:
            if merged and a - merged[-1][1] < self.min_silence:
                merged[-1] = (merged[-1][0], b)
            else:
                merged.append((a, b))
        return [(a, b) for a, b in merged if b - a >= 0.06]


def load_vad(kind: str, min_silence: float = 0.1) -> tuple[SileroVad | EnergyVad, str | None]:
    """The VAD asked for, and a note when Silero was asked for but the energy VAD stands in."""
    if kind == "energy":
        return EnergyVad(min_silence), None
    try:
        return SileroVad(min_silence), None
    except Exception as e:  # not installed, or its TorchScript model does not load with this torch
        note = f"silero-vad unavailable ({type(e).__name__}: {e}); using the energy VAD"
        return EnergyVad(min_silence), note
