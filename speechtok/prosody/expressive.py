"""Expressive sequences as Spirit-LM Expressive builds them (spiritlm/speech_tokenizer/spiritlm_tokenizer.py,
`units_to_string`): the style, pitch and unit streams, each token placed at its start time (frame index /
rate; with deduplication, a run's first frame), merged by a stable sort on time, so tokens at the same time
come style, then pitch, then unit. Pitch runs are deduplicated when units are (as there), style never.
`split_generated` takes a generated sequence back apart into its streams."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ORDER = ("style", "pitch", "units")  # who goes first at equal start times


@dataclass
class TimedStream:
    """Frame-level tokens of one stream: frame i starts at (first + i) / rate seconds."""

    kind: str
    tokens: np.ndarray
    rate: float
    dedup: bool = False
    first: int = 0


def starts(stream: TimedStream) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, start times) of a stream, keeping only each run's first frame when deduplicated."""
    tokens = np.asarray(stream.tokens, dtype=np.int64)
    keep = np.ones(len(tokens), dtype=bool)
    if stream.dedup and len(tokens):
        keep[1:] = tokens[1:] != tokens[:-1]
    index = np.flatnonzero(keep)
    return tokens[index], (stream.first + index) / stream.rate


def merge_by_time(streams: list[TimedStream]) -> list[tuple[str, int]]:
    """(kind, token) of every kept token of `streams`, by start time; ties in ORDER."""
    rows = []
    for stream in sorted(streams, key=lambda s: ORDER.index(s.kind)):
        tokens, times = starts(stream)
        rows += [(t, stream.kind, int(tok)) for tok, t in zip(tokens, times)]
    rows.sort(key=lambda r: r[0])  # stable: at equal times the ORDER of the streams above stays
    return [(kind, tok) for _, kind, tok in rows]


def first_at_or_after(frame: int, unit_rate: float, rate: float) -> int:
    """The first frame j of a stream at `rate` starting no earlier than unit frame `frame`
    (j / rate >= frame / unit_rate, compared as j·unit_rate >= frame·rate: exact for rates like 12.5, 25,
    50)."""
    j = int(np.ceil(frame * rate / unit_rate))
    while j > 0 and (j - 1) * unit_rate >= frame * rate:
        j -= 1
    while j * unit_rate < frame * rate:
        j += 1
    return j


def window(tokens: np.ndarray, rate: float, f0: int, f1: int | None,
           unit_rate: float) -> tuple[np.ndarray, int]:
    """The frames of a stream at `rate` that start within unit frames [f0, f1) (f1 None: to the stream's end),
    and the index of the first."""
    lo = min(first_at_or_after(f0, unit_rate, rate), len(tokens))
    hi = len(tokens) if f1 is None else min(max(first_at_or_after(f1, unit_rate, rate), lo), len(tokens))
    return np.asarray(tokens[lo:hi]), lo


def expressive_ids(vocab, sample: dict, frames: np.ndarray, f0: int, f1: int, dedup: bool) -> list[int]:
    """LM ids of units frames[f0:f1] merged with the sample's pitch and style tokens that start in the
    same time span (the last span also takes what starts after the units end); streams the vocabulary or
    the sample lacks are left out."""
    rate = vocab.frame_rate
    streams = [TimedStream("units", frames[f0:f1], rate, dedup, f0)]
    for kind, name, k_rate, k_dedup in (("pitch", vocab.pitch_stream, vocab.pitch_rate, dedup),
                                        ("style", vocab.style_stream, vocab.style_rate, False)):
        if name and name in sample:
            tokens, first = window(sample[name], k_rate, f0, f1 if f1 < len(frames) else None, rate)
            streams.append(TimedStream(kind, tokens, k_rate, k_dedup, first))
    return [vocab.token_id(kind, tok) for kind, tok in merge_by_time(streams)]


def split_generated(vocab, ids) -> dict[str, np.ndarray]:
    """A generated expressive sequence (LM ids) → its streams in order: {"units", "pitch", "style"}; ids of
    no stream (markers, text) are dropped."""
    ids = np.asarray(ids, dtype=np.int64)
    out = {}
    for kind in ORDER:
        lo, k = vocab.range_of(kind)
        mine = (ids >= lo) & (ids < lo + k)
        out[kind] = ids[mine] - lo
    return out


def expressive_mask(vocab, size: int) -> np.ndarray:
    """[size] bool: True on the pitch and style token ids (what an expressive LM may also generate)."""
    mask = np.zeros(size, dtype=bool)
    for kind in ("pitch", "style"):
        lo, k = vocab.range_of(kind)
        mask[max(lo, 0): max(lo, 0) + k] = True
    return mask
