"""`F0Tokenizer` (`tok encode -t f0:TRACKER[:rate=HZ][:fmin=HZ][:fmax=HZ][:name=NAME]`): the F0 contour as
a stream of the shards, one value per token frame, in tenths of a hertz with 0 for unvoiced frames (the
voiced flag): shards hold integers, and 0.1 Hz is far below any tracker's error. Frame j covers samples
[j·hop, (j+1)·hop) of the 16 kHz audio, hop = 16000 / rate: at rate 50 it lines up with HuBERT's units,
at 200 it is the trackers' own 5 ms grid (what the F0 VQ-VAE reads). With `stats=PATH` the stream holds
log-F0 normalised per speaker instead (`speaker_norm`; `tok encode` passes each utterance's speaker)."""

from __future__ import annotations

import numpy as np
import torch

from speechtok.prosody.base import FrameTokenizer
from speechtok.prosody.speaker_norm import Z_OFFSET, Z_SCALE, normalize_for
from speechtok.prosody.trackers import FMAX, FMIN, HOP, SAMPLE_RATE, Tracker, to_frame_rate
from speechtok.tokenizers.card import seal_card

DECIHERTZ = 10.0  # stored values per hertz
DEFAULT_RATE = 50.0


def frame_hop(rate: float) -> int:
    """Samples per token frame at 16 kHz for `rate` frames per second (a multiple of the 5 ms grid)."""
    hop = SAMPLE_RATE / rate if rate > 0 else 0.5  # (no hop: refused below)
    if not rate > 0 or hop != int(hop) or int(hop) % HOP:
        raise ValueError(f"rate={rate:g}: 16000/rate must be a whole multiple of {HOP} samples "
                         "(200, 100, 50, 40, 25, 20, 12.5, ... frames per second)")
    return int(hop)


def to_decihertz(f0: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(f0) * DECIHERTZ).astype(np.int64)


def from_decihertz(values: np.ndarray) -> np.ndarray:
    """Stored F0 values → Hz (0 where unvoiced)."""
    return np.asarray(values, dtype=np.float64) / DECIHERTZ


class F0Tokenizer(FrameTokenizer):
    """F0 in 0.1 Hz per token frame (0: unvoiced), by one of the trackers."""

    kind = "f0"

    def __init__(self, tracker: str, rate: float = DEFAULT_RATE, fmin: float = FMIN, fmax: float = FMAX,
                 name: str = "f0", device: str | torch.device = "cpu", stats: str | None = None,
                 speakers: dict[str, dict] | None = None):
        self.tracker = Tracker(tracker, fmin, fmax, device)
        self.hop = frame_hop(rate)
        self.name = name
        self.sample_rate = SAMPLE_RATE
        if stats is not None:
            from speechtok.prosody.speaker_norm import read_speaker_stats

            speakers = read_speaker_stats(stats, self.tracker.card())
        self.speakers = speakers  # per-speaker log-F0 statistics: the stream is normalised per speaker
        self.codebook_size = (2 * Z_OFFSET if speakers else int(np.ceil(self.tracker.fmax * DECIHERTZ))) + 1

    @property
    def uses_speakers(self) -> bool:
        return self.speakers is not None

    @property
    def device(self) -> torch.device:
        return self.tracker.device

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    def num_frames(self, num_samples) -> torch.Tensor:
        return torch.div(torch.as_tensor(num_samples), self.hop, rounding_mode="floor")

    def card(self) -> dict:
        unit = {"unit": "0.1 Hz, 0 = unvoiced"} if self.speakers is None else {
            "unit": f"log-F0 normalised per speaker, 1/{Z_SCALE:g} std, {Z_OFFSET} = the speaker's mean, "
                    "0 = unvoiced", "norm": "speaker", "speakers": self.speakers}
        return seal_card({"type": "f0", **self.tracker.card(), **unit, "codebook_size": self.codebook_size,
                          "sample_rate": self.sample_rate, "frame_rate": self.frame_rate})

    def f0_batch(self, wav: torch.Tensor, lengths: torch.Tensor) -> list[np.ndarray]:
        """F0 in Hz per token frame of each row (0 where unvoiced)."""
        tracked = self.tracker(wav, lengths)
        return [to_frame_rate(f0, int(n), self.hop) for f0, n in zip(tracked, lengths.tolist())]

    def encode_batch(self, wav: torch.Tensor, lengths: torch.Tensor,
                     speakers: list[str | None] | None = None) -> list[np.ndarray]:
        """Each row's stored values: F0 in 0.1 Hz, or normalised by its speaker's statistics."""
        f0s = self.f0_batch(wav, lengths)
        if self.speakers is None:
            return [to_decihertz(f0) for f0 in f0s]
        speakers = speakers if speakers is not None else [None] * len(f0s)
        return [normalize_for(f0, s, self.speakers) for f0, s in zip(f0s, speakers)]


def f0_from_card(card: dict, name: str = "f0", device: str | torch.device = "cpu") -> F0Tokenizer:
    """The F0 tokenizer a card (of an F0 stream, or inside a pitch tokenizer's card) describes."""
    speakers = card.get("speakers") if card.get("norm") == "speaker" else None
    return F0Tokenizer(card["tracker"], card["frame_rate"], card["fmin"], card["fmax"], name=name,
                       device=device, speakers=speakers)
