"""Pitch tokens as pGSLM makes them (fairseq examples/textless_nlp/pgslm/quantize_f0.py): normalised log-F0
cut into `bins` bins of equal mass over the training frames (bin = how many edges the value exceeds, their
`naive_quantize`), here with token 0 for unvoiced frames and 1..bins for voiced ones. The statistics are the
utterance's own (a tokenizer sees no speaker labels); `tok prosody train --method bins` fits the edges from
an F0 stream of shards, and the card holds them with each bin's median (its decoded value)."""

from __future__ import annotations

import numpy as np
import torch

from speechtok.prosody.base import FrameTokenizer
from speechtok.prosody.f0_tokenizer import F0Tokenizer, f0_from_card
from speechtok.prosody.normalize import normalize
from speechtok.tokenizers.card import seal_card

UNVOICED = 0


def fit_bins(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(edges [bins-1], medians [bins]): equal-mass bins of the voiced training values (NaNs dropped)."""
    x = np.sort(np.asarray(values, dtype=np.float64)[~np.isnan(values)])
    if len(x) < bins:
        raise ValueError(f"{len(x)} voiced frames cannot fill {bins} pitch bins")
    edges = np.quantile(x, np.arange(1, bins) / bins)
    which = np.searchsorted(edges, x, side="left")
    medians = np.array([np.median(x[which == b]) if (which == b).any() else np.nan for b in range(bins)])
    fill = np.concatenate([[x[0]], edges, [x[-1]]])  # an empty bin decodes to its middle
    medians = np.where(np.isnan(medians), (fill[:-1] + fill[1:]) / 2, medians)
    return edges, medians


class PitchBins(FrameTokenizer):
    """Normalised log-F0 per frame → bin token (0: unvoiced), and back to the bin's median."""

    kind = "pitch"
    name = "pitch"

    def __init__(self, f0: F0Tokenizer, norm: str, edges: np.ndarray, medians: np.ndarray,
                 meta: dict | None = None):
        if len(medians) != len(edges) + 1 or np.any(np.diff(edges) < 0):
            raise ValueError("pitch bins need ascending edges and one median per bin")
        self.f0, self.norm = f0, norm
        self.edges, self.medians = np.asarray(edges, dtype=np.float64), np.asarray(medians, dtype=np.float64)
        self.meta = dict(meta or {})
        self.sample_rate, self.codebook_size = f0.sample_rate, len(medians) + 1

    device = property(lambda self: self.f0.device)
    frame_rate = property(lambda self: self.f0.frame_rate)

    def num_frames(self, num_samples) -> torch.Tensor:
        return self.f0.num_frames(num_samples)

    def quantize(self, f0: np.ndarray) -> np.ndarray:
        """F0 in Hz per frame (0: unvoiced) → tokens."""
        x = normalize(f0, self.norm)
        voiced = ~np.isnan(x)
        tokens = np.full(len(x), UNVOICED, dtype=np.int64)
        tokens[voiced] = 1 + np.searchsorted(self.edges, x[voiced], side="left")
        return tokens

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Tokens → normalised log-F0 (the bin's median; NaN where unvoiced)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        value = self.medians[np.clip(tokens - 1, 0, len(self.medians) - 1)]
        return np.where(tokens == UNVOICED, np.nan, value)

    def encode_batch(self, wav: torch.Tensor, lengths: torch.Tensor) -> list[np.ndarray]:
        return [self.quantize(f0) for f0 in self.f0.f0_batch(wav, lengths)]

    def card(self) -> dict:
        return seal_card({"type": "pitch", "method": "bins", "f0": self.f0.card(), "norm": self.norm,
                          "edges": self.edges.tolist(), "medians": self.medians.tolist(),
                          "codebook_size": self.codebook_size, "sample_rate": self.sample_rate,
                          "frame_rate": self.frame_rate, **self.meta})

    @classmethod
    def from_card(cls, card: dict, device: str | torch.device = "cpu") -> "PitchBins":
        meta = {k: v for k, v in card.items() if k not in ("type", "method", "f0", "norm", "edges", "medians",
                                                            "codebook_size", "sample_rate", "frame_rate",
                                                            "card_sha256")}
        return cls(f0_from_card(card["f0"], device=device), card["norm"], np.array(card["edges"]),
                   np.array(card["medians"]), meta)
