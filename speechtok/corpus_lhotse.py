"""lhotse corpora as they are: a CutSet, or a RecordingSet (+ SupervisionSet) manifest (JSONL or JSONL.gz),
or a Lhotse Shar folder, read with lhotse itself (the `lhotse` extra) into `Utterance`s.

A cut is one utterance: its offset and duration in the recording are the span, and the duration is kept, so
no audio header is read before decoding. A multi-channel cut reads its first channel only. The cut's
supervisions bring text (joined in time order), speaker and language (when all agree) and word alignments
(lhotse gives them in recording time; the words are moved to utterance time). A RecordingSet is cut into
its supervisions (a recording without any is one utterance). Audio sources must be files (or the Shar tars);
urls, commands and recording transforms are reported per utterance."""

from __future__ import annotations

import gzip
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from speechtok.corpus import CorpusError, CorpusSource, Utterance, Word, corpus_library

CUT_TYPES = {"MonoCut", "MultiCut", "MixedCut", "PaddingCut", "DataCut"}
SHAR_CUTS = re.compile(r"cuts\.(\d+)\.jsonl(\.gz)?")


def shar_cut_files(folder: Path) -> list[Path]:
    """The `cuts.NNNNNN.jsonl[.gz]` files of a Shar folder, in shard order."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted((folder / n for n in names if SHAR_CUTS.fullmatch(n)), key=lambda p: p.name)


def first_object(path: Path) -> dict | None:
    """The first JSON object line of a (gzipped) JSONL file, or None if it does not start with one."""
    try:
        with (gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else
              open(path, encoding="utf-8")) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    return row if isinstance(row, dict) else None
    except (OSError, ValueError, EOFError):
        return None
    return None


def manifest_kind(row: dict | None) -> str | None:
    """'cuts', 'recordings' or 'supervisions' for the first line of a lhotse manifest, else None."""
    if not row:
        return None
    if row.get("type") in CUT_TYPES:
        return "cuts"
    if "sources" in row and "sampling_rate" in row:
        return "recordings"
    if "recording_id" in row and "duration" in row and "path" not in row:
        return "supervisions"
    return None


def is_lhotse(path: Path) -> bool:
    """A Shar folder, or a manifest whose first line is a lhotse cut, recording or supervision."""
    if path.is_dir():
        return bool(shar_cut_files(path))
    return path.is_file() and manifest_kind(first_object(path)) is not None


def read_lhotse(source: CorpusSource, errors: list[CorpusError]) -> Iterator[Utterance]:
    """Utterances of a lhotse manifest or Shar folder (see the module docstring)."""
    lhotse = corpus_library("lhotse", "lhotse manifests")
    path = Path(source.path)
    if path.is_dir():
        return _read_shar(path, errors)
    kind = manifest_kind(first_object(path))
    if kind == "supervisions":
        raise ValueError(f"{path}: a lhotse SupervisionSet has no audio; give the RecordingSet as the corpus "
                         "and this file with --supervisions")
    manifest = lhotse.load_manifest_lazy(path)
    if kind == "recordings":
        sups = _supervisions(source, path)
        cuts = lhotse.CutSet.from_manifests(recordings=manifest, supervisions=sups)
        return _cut_utterances(_cut_to_supervisions(cuts), str(path), None, errors)
    return _cut_utterances(manifest, str(path), None, errors)


def _supervisions(source: CorpusSource, recordings: Path):
    """--supervisions, else a sibling file named like the recordings with 'supervisions' for 'recordings'
    (lhotse recipes write them so), else none."""
    lhotse = corpus_library("lhotse", "lhotse manifests")
    given = source.supervisions
    if given is None and "recordings" in recordings.name:
        sibling = recordings.with_name(recordings.name.replace("recordings", "supervisions"))
        given = str(sibling) if sibling.is_file() else None
    if given is None:
        return None
    if manifest_kind(first_object(Path(given))) != "supervisions":
        raise ValueError(f"{given}: not a lhotse SupervisionSet manifest")
    return lhotse.load_manifest(given)


def _cut_to_supervisions(cuts) -> Iterator:
    """One cut per supervision (a recording's cut without supervisions stays whole)."""
    for cut in cuts:
        if cut.supervisions:
            yield from cut.trim_to_supervisions(keep_overlapping=False)
        else:
            yield cut


def _read_shar(folder: Path, errors: list[CorpusError]) -> Iterator[Utterance]:
    """Each `cuts.N.jsonl.gz` with its `recording.N.tar` (the audio of each cut, named by cut id)."""
    lhotse = corpus_library("lhotse", "lhotse manifests")
    for cuts_file in shar_cut_files(folder):
        number = SHAR_CUTS.fullmatch(cuts_file.name).group(1)
        tar = folder / f"recording.{number}.tar"
        if not tar.is_file():
            raise ValueError(f"{folder}: Shar shard {number} has no recording.{number}.tar (audio); "
                             "export the cuts with fields={'recording': ...}")
        yield from _cut_utterances(lhotse.load_manifest_lazy(cuts_file), str(cuts_file), str(tar), errors)


def _cut_utterances(cuts, where: str, shar_tar: str | None, errors: list[CorpusError]) -> Iterator[Utterance]:
    for n, cut in enumerate(cuts, 1):
        try:
            yield cut_utterance(cut, shar_tar, errors)
        except ValueError as e:
            errors.append(CorpusError(file=f"{where}:{n}", id=getattr(cut, "id", None), reason=str(e)))


@lru_cache(maxsize=4096)
def _absolute(path: str) -> str:
    return os.path.abspath(path)


def cut_utterance(cut, shar_tar: str | None, notes: list[CorpusError]) -> Utterance:
    """One MonoCut / MultiCut → Utterance; a ValueError says why a cut cannot be one."""
    kind = type(cut).__name__
    rec = getattr(cut, "recording", None)
    if kind not in ("MonoCut", "MultiCut") or rec is None:
        raise ValueError(f"a {kind} without its own recording (mixed or padded) is not one span of one file")
    if rec.transforms:
        raise ValueError("recordings with transforms (speed, volume, resampling) are not supported")
    channel = cut.channel if isinstance(cut.channel, int) else cut.channel[0]
    src = next((s for s in rec.sources if channel in s.channels), None)
    if src is None:
        raise ValueError(f"no audio source holds channel {channel}")
    if src.type == "shar" or shar_tar is not None:
        path, member = os.path.abspath(shar_tar), cut.id
    elif src.type == "file":
        path, member = _absolute(src.source), None  # lhotse reads relative paths from the working dir
    else:
        raise ValueError(f"lhotse audio source type '{src.type}' is not supported (files and Shar only)")
    whole = cut.start == 0 and abs(cut.duration - rec.duration) < 1e-9
    sups = sorted(cut.supervisions, key=lambda s: s.start)
    texts = [s.text for s in sups if s.text]
    speakers = {s.speaker for s in sups if s.speaker is not None}
    languages = {s.language for s in sups if s.language is not None}
    utt = Utterance(
        id=cut.id, path=path, member=member, seconds=cut.duration,
        start=None if whole else cut.start, end=None if whole else round(cut.start + cut.duration, 9),
        text=" ".join(texts) if texts else None,
        speaker=speakers.pop() if len(speakers) == 1 else None,
        language=languages.pop() if len(languages) == 1 else None,
        channel=src.channels.index(channel) if len(src.channels) > 1 else None,
    )
    words = [w for s in sups for w in (s.alignment or {}).get("word", [])]
    if words:
        utt.words = [Word(w.symbol, round(w.start - cut.start, 6), round(w.start - cut.start + w.duration, 6))
                     for w in words]
        if min(w.start for w in utt.words) < -1e-3 or max(w.end for w in utt.words) > cut.duration + 1e-3:
            notes.append(CorpusError(file=path, id=cut.id, reason="words dropped, utterance kept: the word "
                                     "alignment lies outside the cut"))
            utt.words = None
    return utt
