"""The data model every pipeline step shares: an `Utterance` (a span of one audio file plus its labels)
and a corpus, read from a folder, a speechtok JSONL manifest, lhotse manifests or Shar (corpus_lhotse) or a
Hugging Face `datasets` dataset (corpus_hf)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")


@dataclass
class Word:
    word: str
    start: float
    end: float


@dataclass
class Utterance:
    """One utterance: `path` and an optional [start, end) span in seconds, with optional transcript,
    word timings (seconds from the utterance start), speaker and language. `channel` picks one channel of a
    multi-channel file (None: the mean of all); `member` names the audio inside `path` when `path` is a
    container (a Shar tar member, 'COLUMN/ROW' of an arrow or parquet file); `seconds`, when a manifest
    gives it, is the span's duration, so nothing has to read the audio header before decoding."""

    id: str
    path: str
    start: float | None = None
    end: float | None = None
    text: str | None = None
    words: list[Word] | None = None
    speaker: str | None = None
    extra: dict = field(default_factory=dict)
    language: str | None = None
    channel: int | None = None
    member: str | None = None
    seconds: float | None = None

    def labels(self) -> dict:
        """The optional labels that travel with the tokens into the shards."""
        out: dict = {}
        if self.text is not None:
            out["text"] = self.text
        if self.words is not None:
            out["words"] = [asdict(w) for w in self.words]
        if self.speaker is not None:
            out["speaker"] = self.speaker
        if self.language is not None:
            out["language"] = self.language
        if self.channel is not None:
            out["channel"] = self.channel
        return out


def printable(text: str) -> str:
    """A str safe to write as UTF-8: bytes of a non-UTF-8 file name (held as surrogates) become \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass
class CorpusError:
    """A line for errors.jsonl: which file, which utterance, why."""

    file: str
    reason: str
    id: str | None = None

    def to_json(self) -> str:
        return json.dumps({k: printable(v) for k, v in asdict(self).items() if v is not None},
                          ensure_ascii=False)


def scan_folder(root: str | os.PathLike) -> Iterator[Utterance]:
    """Audio files under `root`, recursively, in sorted order; the id is the path relative to `root`
    without its extension."""
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(AUDIO_EXTENSIONS) and not name.startswith("."):
                path = Path(dirpath) / name
                rel = path.relative_to(root).with_suffix("")
                yield Utterance(id=printable(rel.as_posix()), path=str(path))


def bad_id_reason(utt_id: str) -> str | None:
    """Why an id cannot be used (None when it can): ids name shard members and output files."""
    if not utt_id:
        return "empty 'id'"
    bad = next((c for c in utt_id if ord(c) < 32 or 127 <= ord(c) < 160), None)
    if bad is not None:
        return f"'id' {utt_id!r} contains the control character {bad!r}"
    return None


def _seconds(row: dict, key: str) -> float | None:
    """An optional time in seconds: a finite, non-negative JSON number (or a string that is one)."""
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"'{key}' must be a number of seconds, got {json.dumps(value)}")
    try:
        out = float(value)
    except ValueError:
        raise ValueError(f"'{key}' must be a number of seconds, got {json.dumps(value)}") from None
    if not math.isfinite(out) or out < 0:
        raise ValueError(f"'{key}' must be a finite number of seconds >= 0, got {value}")
    return out


def _parse_words(raw) -> list[Word]:
    """Word timings; raises ValueError naming the first bad entry (the caller drops the words)."""
    if not isinstance(raw, list):
        raise ValueError("'words' must be a list")
    words: list[Word] = []
    for i, w in enumerate(raw, 1):
        if not isinstance(w, dict) or not isinstance(w.get("word"), str):
            raise ValueError(f"word {i} {json.dumps(w)[:80]} needs a string 'word'")
        try:
            start, end = _seconds(w, "start"), _seconds(w, "end")
        except ValueError as e:
            raise ValueError(f"word {i}: {e}") from None
        if start is None or end is None:
            raise ValueError(f"word {i} ({w['word']!r}) needs 'start' and 'end'")
        if end < start:
            raise ValueError(f"word {i} ({w['word']!r}): end {end} is before start {start}")
        if words and start < words[-1].start:
            raise ValueError(f"word {i} ({w['word']!r}) starts at {start}, before word {i - 1} "
                             f"({words[-1].start})")
        words.append(Word(w["word"], start, end))
    return words


def parse_manifest_line(line: str, where: str, base_dir: Path,
                        notes: list[CorpusError] | None = None) -> Utterance:
    """One JSONL line → Utterance; raises ValueError with a one-line reason naming the field. Bad word
    timings drop the words only (with a note in `notes`), keeping the utterance."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: bad JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object")
    for key in ("id", "path"):
        if row.get(key) is None or row.get(key) == "":
            raise ValueError(f"{where}: missing '{key}'")
    if isinstance(row["id"], bool) or not isinstance(row["id"], (str, int)):
        raise ValueError(f"{where}: 'id' must be a string, got {json.dumps(row['id'])}")
    utt_id = str(row["id"])
    if (why := bad_id_reason(utt_id)) is not None:
        raise ValueError(f"{where}: {why}")
    if not isinstance(row["path"], str) or "\0" in row["path"]:
        raise ValueError(f"{where}: 'path' must be a file name, got {json.dumps(row['path'])[:80]}")
    for key in ("text", "speaker", "language"):
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise ValueError(f"{where}: '{key}' must be a string, got {json.dumps(value)[:80]}")
    path = Path(row["path"])
    if not path.is_absolute():
        path = base_dir / path
    try:
        start, end = _seconds(row, "start"), _seconds(row, "end")
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if start is not None and end is not None and end <= start:
        raise ValueError(f"{where}: end {row['end']} is not after start {row['start']}")
    channel = row.get("channel")
    if channel is not None and (isinstance(channel, bool) or not isinstance(channel, int) or channel < 0):
        raise ValueError(f"{where}: 'channel' must be an integer >= 0, got {json.dumps(channel)[:80]}")
    member = row.get("member")
    if member is not None and (not isinstance(member, str) or not member):
        raise ValueError(f"{where}: 'member' must name the audio inside 'path', got "
                         f"{json.dumps(member)[:80]}")
    words = None
    if row.get("words") is not None:
        try:
            words = _parse_words(row["words"])
        except ValueError as e:
            if notes is not None:
                notes.append(CorpusError(file=where, id=utt_id, reason=f"words dropped, utterance kept: {e}"))
    known = {"id", "path", "start", "end", "text", "words", "speaker", "language", "channel", "member"}
    return Utterance(
        id=utt_id,
        path=str(path),
        start=start,
        end=end,
        text=None if row.get("text") is None else str(row["text"]),
        words=words,
        speaker=None if row.get("speaker") is None else str(row["speaker"]),
        extra={k: v for k, v in row.items() if k not in known},
        language=None if row.get("language") is None else str(row["language"]),
        channel=channel,
        member=member,
    )


def read_manifest(path: str | os.PathLike, errors: list[CorpusError]) -> Iterator[Utterance]:
    """Utterances of a JSONL manifest; bad lines are appended to `errors` and skipped.
    Relative audio paths are taken relative to the manifest's folder."""
    path = Path(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                errors.append(CorpusError(file=where, reason="line is not valid UTF-8"))
                continue
            if not line.strip():
                continue
            try:
                yield parse_manifest_line(line, where, path.parent, errors)
            except ValueError as e:
                errors.append(CorpusError(file=where, reason=str(e).split(": ", 1)[-1]))


def jsonl_objects(path: str | os.PathLike, errors: list[str]) -> Iterator[tuple[str, dict]]:
    """('file:line', object) for each JSON object line of a JSONL file; blank lines are skipped, and lines
    that are not a JSON object are reported in `errors` as 'file:line: reason'."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            where = f"{path}:{lineno}"
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(f"{where}: bad JSON ({e.msg})")
                continue
            if not isinstance(row, dict):
                errors.append(f"{where}: expected a JSON object")
                continue
            yield where, row


def corpus_library(module: str, what: str):
    """Import the library that reads a corpus format (extra `corpora`), or a ValueError saying how to get it
    (one error line, as every unreadable corpus)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"reading {what} needs `{module}` ({e}): pip install 'speechtok[corpora]'") from None


@dataclass(frozen=True)
class CorpusSource:
    """A corpus path plus how to read it where the format leaves a choice: `supervisions` for a lhotse
    RecordingSet, the column names of a Hugging Face dataset. Passes for the path (os.fspath, str), so a
    pipeline hands it to `load_corpus` unchanged."""

    path: str
    supervisions: str | None = None
    text_column: str | None = None
    speaker_column: str | None = None
    id_column: str | None = None

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path


def read_source(source: CorpusSource, errors: list[CorpusError]) -> Iterator[Utterance]:
    """Utterances of any corpus kind, in corpus order: a folder of audio, a speechtok JSONL, lhotse
    manifests or Shar, or a Hugging Face dataset (the last two need the extras `lhotse` / `datasets`)."""
    from speechtok import corpus_hf, corpus_lhotse

    path = Path(source.path)
    if corpus_hf.is_hf_dataset(path):
        return corpus_hf.read_dataset(source, errors)
    if corpus_lhotse.is_lhotse(path):
        return corpus_lhotse.read_lhotse(source, errors)
    if path.is_dir():
        return scan_folder(path)
    if path.is_file():
        return read_manifest(path, errors)
    raise FileNotFoundError(f"{path}: no such folder or manifest")


def load_corpus(source: str | os.PathLike | CorpusSource,
                errors: list[CorpusError] | None = None) -> list[Utterance]:
    """A corpus (see `read_source`) → utterances in corpus order.
    Duplicate ids are reported in `errors`; the first occurrence is kept."""
    errors = [] if errors is None else errors
    if not isinstance(source, CorpusSource):
        source = CorpusSource(os.fspath(source))
    utts = list(read_source(source, errors))
    seen: set[str] = set()
    unique = []
    for u in utts:
        if (why := bad_id_reason(u.id)) is not None:
            errors.append(CorpusError(file=u.path, id=printable(u.id), reason=why))
            continue
        if u.id in seen:
            errors.append(CorpusError(file=u.path, id=u.id, reason=f"duplicate id '{u.id}'"))
            continue
        seen.add(u.id)
        unique.append(u)
    return unique
