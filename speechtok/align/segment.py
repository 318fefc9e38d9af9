"""`tok segment`: long recordings → utterances of a target length, cut in pauses. Pauses come from the
word timings when the recording has a transcript (aligned long-form first, so every segment carries its
words), else from voice activity detection. Segments are spans of the original files; no audio is written."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from speechtok.align import load_aligner
from speechtok.align.jobs import ResumableJsonl, run_jobs
from speechtok.align.pipeline import manifest_row, transcript_of
from speechtok.align.vad import SAMPLE_RATE, EnergyVad, SileroVad, load_vad
from speechtok.audio import AudioError, load_utterance, utterance_seconds
from speechtok.corpus import AUDIO_EXTENSIONS, CorpusError, Utterance, Word, load_corpus, printable

PAD = 0.2  # seconds of pause kept on each side of a segment (at most half the pause)


@dataclass
class SegmentSummary:
    recordings: int = 0
    segments: int = 0
    skipped: int = 0
    out_of_range: int = 0
    seconds: float = 0.0
    wall: float = 0.0
    notes: list[str] = field(default_factory=list)
    errors: list[CorpusError] = field(default_factory=list)

    def line(self) -> str:
        return (f"segmented {self.recordings} recordings into {self.segments} segments ({self.out_of_range} "
                f"outside the length range), {self.skipped} already done, {len(self.errors)} errors; "
                f"{self.seconds:.1f} s of audio in {self.wall:.1f} s "
                f"({self.seconds / max(self.wall, 1e-9):.1f}×RT)")


HARD_CUT = 100.0  # cost of a cut inside speech; a cut in a pause of g seconds costs 1 / g
SHORT_GAP = 50.0  # cost of a cut in a gap shorter than min_pause (e.g. between two words)
OUT_OF_RANGE = 1000.0  # cost per second a segment is shorter than min_s or longer than max_s


def plan_segments(start: float, end: float, gaps: list[tuple[float, float]], min_s: float, max_s: float,
                  min_pause: float) -> list[tuple[float, float]]:
    """Speech [start, end) cut into segments of min_s..max_s, in gaps (a, b) between words or speech
    regions: dynamic programming over the cut points, minimising first the seconds outside the range,
    then the cuts' costs: 1 / length for a pause (a gap of at least min_pause), more for a shorter gap,
    most for a hard cut inside speech (offered every 0.5 s of a stretch longer than max_s without gaps)."""
    gaps = sorted(g for g in gaps if start < g[0] <= g[1] < end)
    edges = [start] + [x for g in gaps for x in g] + [end]
    hard = []
    for a, b in zip(edges[::2], edges[1::2]):  # stretches of speech between gaps
        if b - a > max_s:
            hard += [(t, t) for t in np.arange(a + 0.5, b - 0.25, 0.5).round(3).tolist()]
    cost = [1.0 / (b - a) if b - a >= min_pause else SHORT_GAP + 1.0 / (b - a + 0.01) for a, b in gaps]
    cost += [HARD_CUT] * len(hard)
    cuts, cost = zip(*sorted(zip(gaps + hard, cost))) if gaps or hard else ((), ())
    points = [(start, start)] + list(cuts) + [(end, end)]
    cost = [0.0] + list(cost) + [0.0]
    best, back = [0.0] + [np.inf] * (len(points) - 1), [0] * len(points)
    for j in range(1, len(points)):
        for i in range(j - 1, -1, -1):
            length = points[j][0] - points[i][1]
            if length > 2 * max_s and i < j - 1:
                break
            c = best[i] + cost[j] + OUT_OF_RANGE * (max(0.0, min_s - length) + max(0.0, length - max_s))
            if c < best[j] - 1e-9:
                best[j], back[j] = c, i
    segments, j = [], len(points) - 1
    while j > 0:
        i = back[j]
        segments.append((points[i][1], points[j][0]))
        j = i
    return segments[::-1]


def speech_max(max_s: float) -> float:
    """The longest speech span to plan, so that a segment with its padding stays within `max_s`."""
    return max_s - 2 * PAD if max_s > 4 * PAD else max_s


def padded(segments: list[tuple[float, float]], total: float) -> list[tuple[float, float]]:
    """Each segment widened by PAD into its pauses (at most half of each pause, within [0, total])."""
    out = []
    for i, (a, b) in enumerate(segments):
        lo = segments[i - 1][1] if i else 0.0
        hi = segments[i + 1][0] if i + 1 < len(segments) else total
        left = PAD if not i else min(PAD, (a - lo) / 2)
        right = PAD if i + 1 == len(segments) else min(PAD, (hi - b) / 2)
        out.append((max(lo, a - left), min(hi, b + right)))
    return out


class Segmenter:
    """Per process: the aligner (for recordings with a transcript) and the VAD (for those without)."""

    def __init__(self, aligner: str | None, device: str, vad: SileroVad | EnergyVad | None):
        self.aligner = None if aligner is None else load_aligner(aligner, device)
        self.vad = vad

    def segment(self, utt: Utterance, text: str | None, min_s: float, max_s: float,
                min_pause: float) -> tuple[list[dict], list[str], str | None]:
        """(segment rows with times relative to the recording's span, notes, error)."""
        notes: list[str] = []
        if text is None:
            wav = load_utterance(utt, SAMPLE_RATE)
            total = len(wav) / SAMPLE_RATE
            regions = self.vad.regions(wav)
            if not regions:
                return [], ["no speech found"], None
            gaps = [(a[1], b[0]) for a, b in zip(regions, regions[1:])]
            plan = plan_segments(regions[0][0], regions[-1][1], gaps, min_s, speech_max(max_s), min_pause)
            spans = padded(plan, total)
            return [{"start": a, "end": b} for a, b in spans], notes, None
        wav = load_utterance(utt, self.aligner.sample_rate)
        total = len(wav) / self.aligner.sample_rate
        al = self.aligner.align([(wav, text)], phones=False)[0]
        notes += al.notes + [f"word '{w}' not placed" for w in al.unplaced]
        if al.error:
            return [], notes, al.error
        words = al.words
        gaps = [(a.end, b.start) for a, b in zip(words, words[1:])]
        plan = plan_segments(words[0].start, words[-1].end, gaps, min_s, speech_max(max_s), min_pause)
        spans = padded(plan, total)
        rows, i = [], 0
        for a, b in spans:
            mine = []
            while i < len(words) and words[i].start < b:
                w = words[i]
                mine.append(Word(w.word, round(max(0.0, w.start - a), 3), round(min(b, w.end) - a, 3)))
                i += 1
            rows.append({"start": a, "end": b, "text": " ".join(w.word for w in mine),
                         "words": [asdict(w) for w in mine]})
        return rows, notes, None


def _work(seg: Segmenter, item: tuple) -> tuple[list[dict], list[str], str | None]:
    utt, text, min_s, max_s, min_pause = item
    try:
        return seg.segment(utt, text, min_s, max_s, min_pause)
    except AudioError as e:
        return [], [], str(e)


def recordings(source: str, errors: list[CorpusError]) -> list[Utterance]:
    """One audio file, or the recordings of a folder or JSONL manifest."""
    p = Path(source)
    if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS:
        return [Utterance(id=printable(p.stem), path=str(p))]
    return load_corpus(source, errors)


def segment_corpus(source: str, output: str, min_s: float = 3.0, max_s: float = 20.0, min_pause: float = 0.2,
                   vad: str = "silero", aligner: str = "pocketsphinx", jobs: int = 1, device: str = "cpu",
                   progress: bool = True) -> SegmentSummary:
    """Segment every recording of `source` into the manifest `output`; recordings already there are
    skipped, failed ones are reported and left out (a rerun retries them)."""
    t0 = time.perf_counter()
    s = SegmentSummary()
    utts = recordings(source, s.errors)
    out = ResumableJsonl(output, key="source")
    out_dir = Path(output).parent
    todo = []
    for u in utts:
        if u.id in out.done:
            s.skipped += 1
            continue
        try:
            todo.append((u, transcript_of(u), utterance_seconds(u)))
        except AudioError as e:
            s.errors.append(CorpusError(file=u.path, id=u.id, reason=str(e)))
    with_text = any(t is not None for _, t, _ in todo)
    without_text = any(t is None for _, t, _ in todo)
    vad_model, note = load_vad(vad, min_silence=min(0.1, min_pause)) if without_text else (None, None)
    s.notes += [note] if note else []
    try:
        results = run_jobs([(u, t, min_s, max_s, min_pause) for u, t, _ in todo], [x[2] for x in todo],
                           Segmenter,
                           (aligner if with_text else None, device, vad_model),
                           _work, jobs, progress, desc="segment")
        for (u, _, sec), (rows, notes, error) in zip(todo, results):
            s.notes += [f"{u.path}: {n}" for n in notes]
            if error:
                s.errors.append(CorpusError(file=u.path, id=u.id, reason=error))
                continue
            base = manifest_row(u, out_dir)
            offset = u.start or 0.0
            lines = []
            for k, r in enumerate(rows):
                line = {"id": f"{u.id}_{k:04d}", "path": base["path"], "source": u.id,
                        "start": round(offset + r["start"], 3), "end": round(offset + r["end"], 3)}
                line.update({key: r[key] for key in ("text", "words") if key in r})
                if "speaker" in base:
                    line["speaker"] = base["speaker"]
                s.out_of_range += not min_s <= r["end"] - r["start"] <= max_s
                lines.append(line)
            out.append(lines)
            s.recordings += 1
            s.segments += len(lines)
            s.seconds += sec
    finally:
        out.close()
    s.wall = time.perf_counter() - t0
    return s
