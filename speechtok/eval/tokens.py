"""Token quality from shards: bitrate, codebook usage and entropy, and against frame-level phone labels
PNMI, phone purity and cluster purity (the definitions of the HuBERT paper, Hsu et al. 2021)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from speechtok.tokenizers.semantic import run_length


@dataclass
class Stream:
    """One token stream of a shard folder: `n_q` codebooks of `vocab` codes at `frame_rate` Hz."""

    name: str
    kind: str  # "semantic" or "codec"
    vocab: int
    n_q: int
    frame_rate: float


def streams_of(manifest: dict) -> list[Stream]:
    out = []
    for name, card in manifest["tokenizers"].items():
        if card["type"] == "bpe":  # a `tok encode --bpe` stream: `tok eval tokens --bpe` reports it
            continue
        if card["type"] == "semantic":
            out.append(Stream(name, "semantic", int(card["k"]), 1, float(card["frame_rate"])))
        else:
            out.append(Stream(name, "codec", int(card["codebook_size"]), int(card["n_q"]),
                              float(card["frame_rate"])))
    return out


def frames_of(sample: dict, stream: Stream) -> np.ndarray:
    """[n_q, F] frame-level codes of a sample (run-length shards expanded)."""
    codes = sample[stream.name]
    durations = sample.get(stream.name + "_durations")
    if durations is not None:
        codes = np.repeat(codes, durations)
    return np.asarray(codes, dtype=np.int64).reshape(stream.n_q, -1)


def entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) if len(p) else 0.0


class TokenStats:
    """Accumulates per-codebook code counts, frame counts and run-length-deduplicated counts of a stream."""

    def __init__(self, stream: Stream):
        self.stream = stream
        self.counts = np.zeros((stream.n_q, stream.vocab), dtype=np.int64)
        self.dedup_counts = np.zeros((stream.n_q, stream.vocab), dtype=np.int64)
        self.seconds = 0.0

    def add(self, codes: np.ndarray, seconds: float) -> None:
        for q in range(self.stream.n_q):
            self.counts[q] += np.bincount(codes[q], minlength=self.stream.vocab)
            self.dedup_counts[q] += np.bincount(run_length(codes[q])[0], minlength=self.stream.vocab)
        self.seconds += seconds

    def result(self) -> dict:
        s, secs = self.stream, max(self.seconds, 1e-9)
        frames = int(self.counts[0].sum())
        codebooks = []
        for q in range(s.n_q):
            h = entropy_bits(self.counts[q])
            codebooks.append({"used": int((self.counts[q] > 0).sum()),
                              "usage": float((self.counts[q] > 0).mean()), "entropy_bits": h,
                              "normalized_entropy": h / math.log2(s.vocab) if s.vocab > 1 else 0.0,
                              "perplexity": 2 ** h, "entropy_bits_dedup": entropy_bits(self.dedup_counts[q])})
        bits = math.log2(s.vocab)
        tokens_dedup = int(self.dedup_counts.sum())
        return {
            "kind": s.kind, "vocab": s.vocab, "n_q": s.n_q, "frame_rate": s.frame_rate,
            "seconds": self.seconds, "frames": frames,
            # nominal: every token costs log2(vocab) bits; entropy: the unigram entropy of its codebook
            "bitrate": {"nominal_bps": frames * s.n_q * bits / secs,
                        "entropy_bps": frames * sum(c["entropy_bits"] for c in codebooks) / secs,
                        "dedup_tokens_per_second": tokens_dedup / secs,
                        "dedup_nominal_bps": tokens_dedup * bits / secs,
                        "dedup_entropy_bps": sum(int(self.dedup_counts[q].sum()) * c["entropy_bits_dedup"]
                                                 for q, c in enumerate(codebooks)) / secs},
            "codebooks": codebooks,
        }


def phone_unit_metrics(joint: np.ndarray) -> dict:
    """PNMI = I(phone; unit) / H(phone), phone purity = E_unit[max_phone p(phone|unit)], cluster purity =
    E_phone[max_unit p(unit|phone)], from a [phones, units] count matrix."""
    p = joint / joint.sum()
    p_phone, p_unit = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / (p_phone @ p_unit)[nz])).sum())
    h_phone = float(-(p_phone[p_phone > 0] * np.log(p_phone[p_phone > 0])).sum())
    return {"pnmi": mi / h_phone if h_phone > 0 else 0.0,
            "phone_purity": float(p.max(0).sum()), "cluster_purity": float(p.max(1).sum()),
            "frames": int(joint.sum()), "phones": int((joint.sum(1) > 0).sum()),
            "units": int((joint.sum(0) > 0).sum())}
