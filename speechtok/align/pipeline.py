"""`tok align`: every utterance of a corpus with a transcript gets `words` (and `phones`) from an aligner,
written as a JSONL manifest that `tok encode` and `tok eval tokens` read; reruns resume."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from speechtok.align import Aligner, Alignment, load_aligner
from speechtok.align.jobs import ResumableJsonl, complete_lines, line_keys, run_jobs
from speechtok.audio import AudioError, load_utterance, utterance_seconds
from speechtok.corpus import CorpusError, Utterance, load_corpus

TRANSCRIPT_SUFFIXES = (".txt", ".lab")  # a folder corpus's transcripts: x.wav beside x.txt or x.lab


@dataclass
class AlignSummary:
    aligned: int = 0
    without_text: int = 0
    skipped: int = 0  # already in the output (resumed)
    words: int = 0
    seconds: float = 0.0
    wall: float = 0.0
    unplaced: list[str] = field(default_factory=list)  # 'file: word' lines
    notes: list[str] = field(default_factory=list)
    errors: list[CorpusError] = field(default_factory=list)

    def line(self) -> str:
        return (f"aligned {self.aligned} utterances ({self.words} words, {len(self.unplaced)} not placed), "
                f"{self.without_text} without text copied, {self.skipped} already done, {len(self.errors)} "
                f"errors; {self.seconds:.1f} s of audio in {self.wall:.1f} s "
                f"({self.seconds / max(self.wall, 1e-9):.1f}×RT)")


def transcript_of(utt: Utterance) -> str | None:
    """The utterance's text, or the contents of a .txt/.lab file beside its audio."""
    if utt.text is not None:
        return utt.text
    for suffix in TRANSCRIPT_SUFFIXES:
        p = Path(utt.path).with_suffix(suffix)
        if p.is_file():
            return " ".join(p.read_text(encoding="utf-8", errors="replace").split())
    return None


def manifest_row(utt: Utterance, out_dir: Path) -> dict:
    """The utterance as a manifest line, its audio path relative to the output's folder."""
    row = {"id": utt.id, "path": os.path.relpath(os.path.abspath(utt.path), os.path.abspath(out_dir))}
    if utt.member is not None:  # the audio inside a container (Shar tar, arrow / parquet row)
        row["member"] = utt.member
    if utt.start is not None:
        row["start"] = utt.start
    if utt.end is not None:
        row["end"] = utt.end
    row.update(utt.labels())
    return {**row, **{k: v for k, v in utt.extra.items() if k not in row}}


def with_alignment(row: dict, al: Alignment) -> dict:
    row = dict(row, words=[asdict(w) for w in al.words])
    if al.phones is not None:
        row["phones"] = [asdict(p) for p in al.phones]
    return row


def align_batch(aligner: Aligner, batch: list[tuple[Utterance, str]], phones: bool) -> list[Alignment]:
    """Load a batch's audio and align it; unreadable audio becomes an Alignment with `error`."""
    loaded, results = [], {}
    for i, (utt, text) in enumerate(batch):
        try:
            loaded.append((i, load_utterance(utt, aligner.sample_rate), text))
        except AudioError as e:
            results[i] = Alignment(error=str(e))
    for (i, _, _), al in zip(loaded, aligner.align([(w, t) for _, w, t in loaded], phones=phones)):
        results[i] = al
    return [results[i] for i in range(len(batch))]


def _work(aligner: Aligner, item: tuple[list[tuple[Utterance, str]], bool]) -> list[Alignment]:
    return align_batch(aligner, *item)


def align_corpus(source: str, output: str, aligner: str = "pocketsphinx", phones: bool = True, jobs: int = 1,
                 device: str = "cpu", batch_seconds: float = 60.0, progress: bool = True) -> AlignSummary:
    """Align every utterance with a transcript in `source` (folder or manifest) into the manifest `output`.
    Utterances already in `output` are skipped; those without text are copied; failed ones are left out
    (and reported) so that a rerun retries them. Under torchrun each rank aligns every world-th utterance
    into OUTPUT.rankR, and rank 0 appends those to `output` at the end."""
    from speechtok.pipelines.encode import _barrier, dist_info

    t0 = time.perf_counter()
    s = AlignSummary()
    rank, world = dist_info()
    if world > 1 and device == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', rank)}"
    utts = load_corpus(source, s.errors)[rank::world]  # by corpus position, so a rerun splits the same way
    out = ResumableJsonl(output if world == 1 else f"{output}.rank{rank}")
    done = out.done | (line_keys(complete_lines(Path(output))) if world > 1 else set())
    out_dir = Path(output).parent
    todo: list[tuple[Utterance, str, float]] = []
    copied = []
    for u in utts:
        if u.id in done:
            s.skipped += 1
            continue
        text = transcript_of(u)
        if text is None:
            copied.append(manifest_row(u, out_dir))
            continue
        try:
            todo.append((u, text, utterance_seconds(u)))
        except AudioError as e:
            s.errors.append(CorpusError(file=u.path, id=u.id, reason=str(e)))
    out.append(copied)
    s.without_text = len(copied)
    batches, cur, cur_s = [], [], 0.0
    for u, text, sec in todo:
        if cur and cur_s + sec > batch_seconds:
            batches.append(cur)
            cur, cur_s = [], 0.0
        cur.append((u, text, sec))
        cur_s += sec
    batches += [cur] if cur else []
    try:
        results = run_jobs([([(u, t) for u, t, _ in b], phones) for b in batches],
                           [sum(x[2] for x in b) for b in batches], load_aligner, (aligner, device), _work,
                           jobs, progress, desc="align")
        for batch, als in zip(batches, results):
            rows = []
            for (u, text, sec), al in zip(batch, als):
                s.notes += [f"{u.path}: {n}" for n in al.notes]
                s.unplaced += [f"{u.path}: word '{w}' not placed" for w in al.unplaced]
                if al.error:
                    s.errors.append(CorpusError(file=u.path, id=u.id, reason=al.error))
                    continue
                rows.append(with_alignment({**manifest_row(u, out_dir), "text": text}, al))
                s.aligned += 1
                s.words += len(al.words)
                s.seconds += sec
            out.append(rows)
    finally:
        out.close()
    if world > 1:
        _barrier(world)
        if rank == 0:
            merged = ResumableJsonl(output)
            merged.merge([Path(f"{output}.rank{r}") for r in range(world)])
            merged.close()
    s.wall = time.perf_counter() - t0
    return s
