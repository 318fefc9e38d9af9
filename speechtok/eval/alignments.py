"""Phone alignments: read from a JSONL manifest (`"phones": [{"phone", "start", "end"}, ...]`, seconds from
the utterance start, as `tests/speech.py` writes with flite) and turned into frame labels and ABX items;
ZeroSpeech/Libri-light `.item` files are read as they are."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechtok.corpus import jsonl_objects

SILENCES = frozenset({"pau", "sil", "SIL", "sp", "spn", "<sil>", "h#", ""})


@dataclass(frozen=True)
class Phone:
    phone: str
    start: float
    end: float


@dataclass(frozen=True)
class AbxItem:
    """A triphone: frames [onset, offset) seconds of utterance `file`, central `phone` in (prev, next)."""

    file: str
    onset: float
    offset: float
    phone: str
    prev: str
    next: str
    speaker: str


def _phone(raw, where: str) -> Phone:
    try:
        if isinstance(raw, dict):
            return Phone(str(raw["phone"]), float(raw["start"]), float(raw["end"]))
        p, s, e = raw
        return Phone(str(p), float(s), float(e))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: bad phone entry {raw!r} ({e})") from None


def read_phone_alignments(path: str | Path,
                          errors: list[str]) -> tuple[dict[str, list[Phone]], dict[str, str]]:
    """(phones by utterance id, speaker by id) from a JSONL manifest; lines without `phones` are skipped and
    bad lines are reported in `errors` as 'file:line: reason'."""
    phones, speakers = {}, {}
    for where, row in jsonl_objects(path, errors):
        if row.get("phones") is None:
            continue
        try:
            if "id" not in row:
                raise ValueError(f"{where}: no 'id'")
            seq = [_phone(p, where) for p in row["phones"]]
            if any(p.end <= p.start for p in seq):
                raise ValueError(f"{where}: a phone ends before it starts")
        except (TypeError, ValueError) as e:
            errors.append(str(e) if str(e).startswith(where) else f"{where}: bad 'phones' ({e})")
            continue
        phones[str(row["id"])] = seq
        speakers[str(row["id"])] = str(row.get("speaker", row["id"]))
    return phones, speakers


def frame_labels(phones: list[Phone], num_frames: int, frame_rate: float,
                 names: dict[str, int]) -> np.ndarray:
    """The phone index of each frame (by its centre time), -1 where no phone covers it; `names` maps a
    phone to its index and grows with new phones."""
    labels = np.full(num_frames, -1, dtype=np.int64)
    if not phones:
        return labels
    centres = (np.arange(num_frames) + 0.5) / frame_rate
    starts = np.array([p.start for p in phones])
    ends = np.array([p.end for p in phones])
    k = np.searchsorted(ends, centres, side="right")  # first phone that ends after the centre
    ok = (k < len(phones))
    ok[ok] &= starts[k[ok]] <= centres[ok]
    ids = np.array([names.setdefault(p.phone, len(names)) for p in phones])
    labels[ok] = ids[k[ok]]
    return labels


def triphone_items(phones: dict[str, list[Phone]], speakers: dict[str, str],
                   silences: frozenset[str] = SILENCES) -> list[AbxItem]:
    """One item per phone with a non-silent phone on each side, spanning the three phones."""
    items = []
    for utt, seq in phones.items():
        for a, b, c in zip(seq, seq[1:], seq[2:]):
            if {a.phone, b.phone, c.phone} & silences:
                continue
            items.append(AbxItem(utt, a.start, c.end, b.phone, a.phone, c.phone, speakers[utt]))
    return items


def read_item_file(path: str | Path, errors: list[str]) -> list[AbxItem]:
    """A ZeroSpeech/Libri-light `.item` file: a header, then `file onset offset phone prev next speaker`."""
    items = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            cols = line.split()
            if lineno == 1 or not cols:
                continue
            if len(cols) != 7:
                errors.append(f"{path}:{lineno}: expected 7 columns, got {len(cols)}")
                continue
            try:
                items.append(AbxItem(cols[0], float(cols[1]), float(cols[2]), *cols[3:]))
            except ValueError:
                errors.append(f"{path}:{lineno}: onset/offset are not numbers")
    return items
