"""Reading audio: any libsndfile format (wav, flac, ogg/opus, mp3), a span of it, mono, float32,
resampled (libsoxr) to the rate a tokenizer wants."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from functools import lru_cache

import numpy as np
import soundfile as sf
import soxr

from speechtok.corpus import Utterance


class AudioError(Exception):
    """An input that cannot be turned into samples; the message is the reason."""


@contextmanager
def _sound_file(path: str, member: str | None = None) -> Iterator[sf.SoundFile]:
    """libsndfile takes names as UTF-8; a name with undecodable bytes (surrogate-escaped) goes in as an open
    file. A missing or 0-byte file is an AudioError saying so (libsndfile says "System error" / "Format not
    recognised"). With `member`, the audio is that member of the container `path` (see audio_members)."""
    if member is not None:
        with sf.SoundFile(io.BytesIO(_member(path, member))) as f:
            yield f
        return
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise AudioError("file not found") from None
    except OSError as e:
        raise AudioError(f"cannot open: {e.strerror or _short(e)}") from None
    if size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        with open(path, "rb") as raw, sf.SoundFile(raw) as f:
            yield f
        return
    with sf.SoundFile(path) as f:
        yield f


def _member(path: str, member: str) -> bytes:
    from speechtok.audio_members import member_bytes

    try:
        return member_bytes(path, member)
    except KeyError:
        raise AudioError(f"no member '{member}' in the container") from None
    except FileNotFoundError:
        raise AudioError("file not found") from None
    except Exception as e:  # tarfile / pyarrow errors on a damaged container
        raise AudioError(f"cannot read '{member}': {_short(e)}") from None


def audio_info(path: str, member: str | None = None) -> tuple[int, int]:
    """(frames, sample_rate) read from the file header."""
    try:
        with _sound_file(path, member) as f:
            return int(f.frames), int(f.samplerate)
    except AudioError:
        raise
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError or TypeError
        raise AudioError(f"cannot read audio header: {_short(e)}") from None


def utterance_seconds(utt: Utterance) -> float:
    """Duration of the utterance's span: the manifest's when it gives one, else from the header, without
    decoding."""
    if utt.seconds is not None:
        return utt.seconds
    frames, sr = audio_info(utt.path, utt.member)
    if frames == 0:
        raise AudioError("zero-length audio (no samples)")
    total = frames / sr
    start = utt.start or 0.0
    end = total if utt.end is None else min(utt.end, total)
    if start >= total:
        raise AudioError(f"start {start:.3f}s is past the end of the file ({total:.3f}s)")
    return max(0.0, end - start)


def read_audio(path: str, start: float | None = None, end: float | None = None, channel: int | None = None,
               member: str | None = None) -> tuple[np.ndarray, int]:
    """Samples of [start, end) seconds of one channel, or down-mixed to mono, float32, and the file's sample
    rate."""
    try:
        with _sound_file(path, member) as f:
            if channel is not None and channel >= f.channels:
                raise AudioError(f"channel {channel} asked for, the file has {f.channels}")
            sr = f.samplerate
            first = int(round((start or 0.0) * sr))
            last = f.frames if end is None else min(f.frames, int(round(end * sr)))
            if first > 0:
                f.seek(first)
            data = f.read(max(0, last - first), dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as e:
        raise AudioError(f"cannot decode audio: {_short(e)}") from None
    if data.shape[0] == 0:
        raise AudioError("no samples (zero-length audio or empty span)")
    wav = data[:, channel] if channel is not None else data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wav).all():
        raise AudioError("audio contains NaN or Inf samples")
    return np.ascontiguousarray(wav, dtype=np.float32), sr


@lru_cache(maxsize=64)
def _ratio(sr_in: int, sr_out: int) -> tuple[int, int]:
    r = Fraction(sr_out, sr_in)
    return r.numerator, r.denominator


def resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling with libsoxr (HQ; ~3x faster than scipy's polyphase FIR, which matters
    when loading feeds a GPU); deterministic, and always ceil(n·sr_out/sr_in) samples long."""
    if sr_in == sr_out:
        return wav
    up, down = _ratio(sr_in, sr_out)
    n = -(-len(wav) * up // down)
    out = soxr.resample(np.ascontiguousarray(wav, dtype=np.float32), sr_in, sr_out, quality="HQ")
    if len(out) != n:  # libsoxr rounds the length; keep the documented rule
        out = np.pad(out, (0, n - len(out))) if len(out) < n else out[:n]
    return out.astype(np.float32, copy=False)


def read_utterance(utt: Utterance) -> tuple[np.ndarray, int]:
    """The utterance's samples (its span, its channel or all down-mixed) and their sample rate."""
    return read_audio(utt.path, utt.start, utt.end, utt.channel, utt.member)


def load_utterance(utt: Utterance, sample_rate: int) -> np.ndarray:
    """The utterance's samples at `sample_rate`, mono float32."""
    wav, sr = read_utterance(utt)
    return resample(wav, sr, sample_rate)


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__
