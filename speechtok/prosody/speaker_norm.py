"""Per-speaker normalisation of an F0 stream at encode time (`-t f0:TRACKER:...:stats=PATH`), as
speech-resynthesis normalises F0: log-F0 minus the speaker's mean, over the speaker's std, the statistics
over all voiced frames of each speaker from a first pass — an F0 stream in Hz of the corpus's shards (`tok
encode -t f0:TRACKER` with the same tracker settings), or a JSON file {speaker: {"logf0_mean", "logf0_std"}}
(a pitch tokenizer card's `speakers` has that form). The table goes into the stream's card, so it is part of
the job: a resume with other statistics is refused, and the same statistics give the same bytes. Stored per
frame: round(1000 · z) + 10000, clipped to 1..20000 (±10 std), 0 = unvoiced."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from speechtok.prosody.normalize import normalize

Z_SCALE = 1000.0  # stored steps per speaker std of log-F0
Z_OFFSET = 10000  # stored value of the speaker's mean log-F0; ±10 std fit in 1..2·Z_OFFSET
TRACKER_KEYS = ("tracker", "fmin", "fmax")  # what must match between the first pass and this stream


class UnknownSpeaker(RuntimeError):
    """An utterance whose speaker has no statistics (a RuntimeError: `tok encode` skips that utterance)."""


def to_stored(z: np.ndarray) -> np.ndarray:
    """Speaker-normalised log-F0 (NaN where unvoiced) → stored int64 values (0 where unvoiced)."""
    z = np.asarray(z, dtype=np.float64)
    voiced = ~np.isnan(z)
    out = np.zeros(len(z), dtype=np.int64)
    out[voiced] = np.clip(np.round(z[voiced] * Z_SCALE) + Z_OFFSET, 1, 2 * Z_OFFSET).astype(np.int64)
    return out


def from_stored(values: np.ndarray) -> np.ndarray:
    """Stored values → speaker-normalised log-F0, NaN where unvoiced."""
    v = np.asarray(values, dtype=np.float64)
    return np.where(v > 0, (v - Z_OFFSET) / Z_SCALE, np.nan)


def normalize_for(f0_hz: np.ndarray, speaker: str | None, table: dict[str, dict]) -> np.ndarray:
    """F0 in Hz of an utterance of `speaker` → stored speaker-normalised values."""
    if speaker is None or speaker not in table:
        why = "has no speaker label" if speaker is None else f"speaker {speaker!r} has no F0 statistics"
        raise UnknownSpeaker(f"{why} (per-speaker F0 normalisation: stats=)")
    s = table[speaker]
    return to_stored(normalize(f0_hz, "meanstd", (s["logf0_mean"], s["logf0_std"])))


def read_speaker_stats(path: str | Path, f0_card: dict) -> dict[str, dict]:
    """The per-speaker log-F0 table from a shards folder's F0 stream in Hz or a JSON file (ValueError naming
    `path` when it holds none, or its tracker settings differ from `f0_card`'s)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder (stats=: F0 shards in Hz or a JSON table)")
    table = _from_shards(path, f0_card) if path.is_dir() else _from_json(path)
    if not table:
        raise ValueError(f"{path}: no speaker with voiced F0 frames (per-speaker statistics need speaker "
                         "labels in the corpus)")
    return dict(sorted(table.items()))


def _from_shards(path: Path, f0_card: dict) -> dict[str, dict]:
    from speechtok.prosody.normalize import speaker_stats
    from speechtok.prosody.train import read_f0_stream
    from speechtok.shards import read_manifest

    _, manifest = read_manifest(path)
    same = [n for n, c in manifest["tokenizers"].items() if c.get("type") == "f0" and "norm" not in c
            and all(c.get(k) == f0_card[k] for k in TRACKER_KEYS)]
    if len(same) != 1:
        want = ", ".join(f"{k}={f0_card[k]}" for k in TRACKER_KEYS)
        raise ValueError(f"{path}: needs one F0 stream in Hz with {want} for per-speaker statistics, "
                         f"found {same or 'none'}")
    _, contours, speakers = read_f0_stream(path, same[0])
    frames = {}
    for s, c in zip(speakers, contours):
        frames[s] = frames.get(s, 0) + int((c > 0).sum())
    return {s: {"logf0_mean": m, "logf0_std": d, "frames": frames[s]}
            for s, (m, d) in speaker_stats(zip(speakers, contours)).items() if s and frames[s] > 1}


def _from_json(path: Path) -> dict[str, dict]:
    try:
        raw = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    raw = raw.get("speakers", raw) if isinstance(raw, dict) else raw  # a pitch tokenizer card, or the table
    ok = isinstance(raw, dict) and all(
        isinstance(v, dict) and all(isinstance(v.get(k), (int, float)) and math.isfinite(v[k])
                                    for k in ("logf0_mean", "logf0_std")) and v["logf0_std"] > 0
        for v in raw.values())
    if not ok:
        raise ValueError(f"{path}: expected {{speaker: {{\"logf0_mean\": M, \"logf0_std\": S > 0}}}}")
    return {str(s): {"logf0_mean": float(v["logf0_mean"]), "logf0_std": float(v["logf0_std"])}
            for s, v in raw.items()}
