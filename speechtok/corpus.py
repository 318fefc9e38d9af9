"""The data model every pipeline step shares: an `Utterance` (a span of one audio file plus its labels)
and a corpus, read lazily from a folder or a JSONL manifest."""

from __future__ import annotations

import json
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
    word timings (seconds from the utterance start) and speaker."""

    id: str
    path: str
    start: float | None = None
    end: float | None = None
    text: str | None = None
    words: list[Word] | None = None
    speaker: str | None = None
    extra: dict = field(default_factory=dict)

    def labels(self) -> dict:
        """The optional labels that travel with the tokens into the shards."""
        out: dict = {}
        if self.text is not None:
            out["text"] = self.text
        if self.words is not None:
            out["words"] = [asdict(w) for w in self.words]
        if self.speaker is not None:
            out["speaker"] = self.speaker
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
        return json.dumps({k: printable(v) for k, v in asdict(self).items() if v is not None}, ensure_ascii=False)


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


def _parse_words(raw, where: str) -> list[Word]:
    if not isinstance(raw, list):
        raise ValueError(f"{where}: 'words' must be a list")
    words = []
    for w in raw:
        try:
            words.append(Word(str(w["word"]), float(w["start"]), float(w["end"])))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: bad word entry {w!r} ({e})") from None
    return words


def parse_manifest_line(line: str, where: str, base_dir: Path) -> Utterance:
    """One JSONL line → Utterance; raises ValueError with a one-line reason."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: bad JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object")
    for key in ("id", "path"):
        if not row.get(key):
            raise ValueError(f"{where}: missing '{key}'")
    path = Path(row["path"])
    if not path.is_absolute():
        path = base_dir / path
    start, end = row.get("start"), row.get("end")
    if start is not None and end is not None and float(end) <= float(start):
        raise ValueError(f"{where}: end {end} is not after start {start}")
    known = {"id", "path", "start", "end", "text", "words", "speaker"}
    return Utterance(
        id=str(row["id"]),
        path=str(path),
        start=None if start is None else float(start),
        end=None if end is None else float(end),
        text=row.get("text"),
        words=None if row.get("words") is None else _parse_words(row["words"], where),
        speaker=None if row.get("speaker") is None else str(row["speaker"]),
        extra={k: v for k, v in row.items() if k not in known},
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
                yield parse_manifest_line(line, where, path.parent)
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


def load_corpus(source: str | os.PathLike, errors: list[CorpusError] | None = None) -> list[Utterance]:
    """A folder of audio files or a JSONL manifest → utterances in corpus order.
    Duplicate ids are reported in `errors`; the first occurrence is kept."""
    errors = [] if errors is None else errors
    source = Path(source)
    if source.is_dir():
        utts = list(scan_folder(source))
    elif source.is_file():
        utts = list(read_manifest(source, errors))
    else:
        raise FileNotFoundError(f"{source}: no such folder or manifest")
    seen: set[str] = set()
    unique = []
    for u in utts:
        if u.id in seen:
            errors.append(CorpusError(file=u.path, id=u.id, reason=f"duplicate id '{u.id}'"))
            continue
        seen.add(u.id)
        unique.append(u)
    return unique
