"""`tok encode`: corpus → token shards + manifest, with one or more tokenizers (semantic units, codecs) in
one pass, each fed audio at its own rate. The job reads as its stages:

- plan (`plan_job`): the corpus, its fingerprint and the journal; durations from file headers; batches of
  length-sorted utterances within windows of the corpus (`batching.plan_batches`);
- read (`batching.BatchStream`): loader workers decode and resample one utterance each, a collator
  thread pads them into (pinned, bucketed) batches ahead of the model;
- featurize → assign (`encode_device.launch`, the main thread): one copy to the device, tokens computed
  there, one copy back, nothing waiting for the device;
- write (`encode_writer.WriterThread`): waits for the tokens, builds each sample's npy/json, writes the
  samples in corpus order into shards and journals each finished shard (`ShardSink`);
- finish (`finish_job`): errors.jsonl and the manifest, written last.

Determinism and resume: samples are written in corpus order, and a sample's tokens depend only on the
corpus, the tokenizers and the batch plan, which the journal records with the precision and device kind
(`token_settings`): a resume with other values is refused. After each shard is renamed into place, a line
in `progress*.jsonl` records it; a rerun of the same command verifies those shards (writing a damaged one
again), skips their utterances (recomputing only the batches that straddle the boundary, with the same
batch composition) and continues, so the result is byte-identical to an uninterrupted run. The journal,
the corpus fingerprint, the folder lock and signal handling are in `encode_job`.

Under torchrun, rank r takes the r-th contiguous block of the corpus, writes `shard-rRRR-NNNNNN.tar` and
its own journal; rank 0 merges everything into one manifest when all ranks are done."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

import speechtok
from speechtok.corpus import CorpusError, load_corpus
from speechtok.folder_lock import FolderLock
from speechtok.hub import portable_card
from speechtok.pipelines.batching import BatchStream, Item, plan_batches, probe_durations
from speechtok.pipelines.encode_device import launch
from speechtok.pipelines.encode_job import (ERRORS_FILE, LOCK_FILE, Journal, corpus_index, index_sha, note,
                                            read_journal, remove_temporaries)
from speechtok.pipelines.encode_writer import Entry, SampleBuilder, StrictError, WriterThread
from speechtok.shards import MANIFEST, ShardWriter, sample_key, write_manifest, write_text_atomic
from speechtok.stopping import Interrupted, StopFlag, stop_on_signals
from speechtok.tokenizers.semantic import SemanticTokenizer
from speechtok.tokenizers.unit_bpe import bpe_card, bpe_streams


@dataclass
class EncodeOptions:
    dedup: bool | None = None  # None: each semantic tokenizer's default
    max_batch_seconds: float = 600.0
    max_batch_size: int = 128
    num_workers: int = 2
    shard_max_bytes: int = 256 << 20
    shard_max_count: int = 10_000
    window: int = 4096
    progress: bool = True
    strict: bool = False
    append: bool = False  # accept a corpus that grew at its end since the job started
    buckets: bool | None = None  # pad batches to a fixed ladder of lengths (None: on CUDA only)
    bpe: tuple = ()  # UnitBPEs whose tokens are written as streams of their own (`unit_bpe.bpe_streams`)

    def check(self) -> None:
        """Refuse options that cannot make shards (a usage error, before anything is written)."""
        for name, low in (("shard_max_count", 1), ("shard_max_bytes", 1), ("max_batch_size", 1),
                          ("window", 1), ("num_workers", 0)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {getattr(self, name)!r}")
        if not self.max_batch_seconds > 0:
            raise ValueError(f"max_batch_seconds must be > 0, got {self.max_batch_seconds!r}")


@dataclass
class EncodeSummary:
    num_utterances: int = 0
    seconds: float = 0.0
    frames: dict[str, int] = field(default_factory=dict)
    errors: list[CorpusError] = field(default_factory=list)
    wall_seconds: float = 0.0
    shards: list[dict] = field(default_factory=list)
    resumed_utterances: int = 0
    oom_splits: int = 0
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage (`EncodeRun.stages`)

    @property
    def realtime_factor(self) -> float:
        return self.seconds / max(self.wall_seconds, 1e-9)

    def line(self) -> str:
        frames = ", ".join(f"{n} {name} frames" for name, n in self.frames.items())
        resumed = f" ({self.resumed_utterances} from a previous run)" if self.resumed_utterances else ""
        return (f"{self.num_utterances} utterances{resumed}, {self.seconds / 3600:.3f} h, {frames} in "
                f"{len(self.shards)} shards; {self.wall_seconds:.1f} s wall = {self.realtime_factor:,.0f}x "
                f"real time; {len(self.errors)} errors")


def dist_info() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        dist.barrier()


def encode_corpus(corpus: str | Path, toks, out_dir: str | Path,
                  opts: EncodeOptions | None = None) -> EncodeSummary:
    """Tokenize every utterance of `corpus` (folder or JSONL manifest) with `toks` (one tokenizer or a
    list) into shards under `out_dir`, resuming a previous run of the same job and repairing shards that
    no longer match their checksum. Bad inputs go to `out_dir/errors.jsonl` and are skipped; the manifest is
    written last. Raises FolderLocked while another job writes there, JobMismatch for another job, other
    token settings or a changed corpus, Interrupted after SIGTERM/SIGINT (the output stays resumable)."""
    toks = list(toks) if isinstance(toks, (list, tuple)) else [toks]
    names = [t.name for t in toks]
    if len(set(names)) != len(names):
        raise ValueError(f"two tokenizers write the same field {names}; name them with ':name=NAME' "
                         "(DIR:name=NAME, KIND:MODEL:name=NAME)")
    opts = opts or EncodeOptions()
    opts.check()
    job_streams(toks, opts)  # a BPE of other codes is refused before anything is written
    rank, world = dist_info()
    if opts.append and world > 1:
        raise ValueError("--append runs as a single process (the ranks' blocks would move)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with FolderLock(out_dir / f"{LOCK_FILE}.r{rank:03d}", "tok encode"), stop_on_signals() as stop:
        return _encode_locked(corpus, toks, out_dir, opts, rank, world, stop)


def _encode_locked(corpus, toks, out_dir: Path, opts: EncodeOptions, rank: int, world: int,
                   stop: StopFlag) -> EncodeSummary:
    """plan → (repair damaged shards) → read, featurize, assign, write → finish."""
    t0 = time.perf_counter()
    job = plan_job(corpus, toks, out_dir, opts, rank, world)
    run = EncodeRun(toks, job, opts, stop)
    for i, why in job.damaged:
        repair_shard(run, job, i, why, out_dir)
    sink = ShardSink(out_dir, opts, job)
    try:
        run.encode(sink.pos, len(job.items), sink)
        sink.close()
    except BaseException:
        sink.abort()  # no .tmp left behind; the journal holds every finished shard
        raise
    for line in filter(None, (u.warning() for u in run.builder.usage.values())):
        print(line, file=sys.stderr)
    summary = finish_job(corpus, toks, out_dir, job, sink, rank, world)
    summary.oom_splits, summary.stages = run.oom_splits, run.stages
    summary.wall_seconds = time.perf_counter() - t0
    return summary


@dataclass
class JobPlan:
    """What the plan stage settles: this rank's utterances (`items`, by position), the journal, and what
    the output depends on."""

    items: list[Item]
    journal: Journal
    cards: dict
    dedups: dict[str, bool]
    corpus_errors: list[CorpusError]
    probe_errors: list[CorpusError]
    damaged: list[tuple[int, str]]  # journaled shards to write again: (index, why)
    pattern: str | None  # shard names under torchrun
    bpes: dict = field(default_factory=dict)  # BPE streams: {field: UnitBPE}


def device_kind(device: torch.device) -> str:
    """'cpu', or the accelerator with its model (tokens may differ bit for bit between GPU models)."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def token_settings(toks, opts: EncodeOptions) -> dict:
    """What a sample's tokens depend on bit for bit besides the corpus and the tokenizer cards: the batch
    plan (batched kernels round differently, which flips near-ties) and, per tokenizer, its precision,
    device kind and chunking of long inputs. Loader workers and shard sizes do not count."""
    settings = {"batch_seconds": opts.max_batch_seconds, "batch_size": opts.max_batch_size,
                "window": opts.window, "buckets": uses_buckets(toks, opts)}
    for t in toks:
        semantic = isinstance(t, SemanticTokenizer)
        settings[f"{t.name}.precision"] = (getattr(t.features, "precision", "fp32") if semantic
                                           else t.precision)
        settings[f"{t.name}.device"] = device_kind(t.device)
        settings[f"{t.name}.chunk_seconds"] = t.chunk_samples / t.sample_rate
        settings[f"{t.name}.context_seconds"] = t.context_samples / t.sample_rate
        settings[f"{t.name}.batch_invariant"] = getattr(t, "batch_invariant", False)
    return settings


def uses_buckets(toks, opts: EncodeOptions) -> bool:
    """Bucketed batch widths (few shapes, so cuDNN's autotuner pays) by default on CUDA only: on a CPU the
    padding costs time and gains nothing."""
    return opts.buckets if opts.buckets is not None else any(t.device.type == "cuda" for t in toks)


def job_streams(toks, opts: EncodeOptions) -> tuple[dict, dict[str, bool], dict]:
    """(cards, dedups, BPE streams) of the streams the job writes: each tokenizer's, then each BPE's
    (a ValueError naming its bpe.json when it was trained on other codes)."""
    dedups = {t.name: ((t.dedup if opts.dedup is None else opts.dedup) if isinstance(t, SemanticTokenizer)
                       else False)
              for t in toks}
    cards = {t.name: t.card() for t in toks}
    bpes = bpe_streams(opts.bpe, cards, dedups)
    cards.update({name: bpe_card(bpe) for name, bpe in bpes.items()})
    return cards, dedups, bpes


def plan_job(corpus, toks, out_dir: Path, opts: EncodeOptions, rank: int, world: int) -> JobPlan:
    """Read the corpus, open (or resume) the journal, and keep the utterances that can be encoded."""
    remove_temporaries(out_dir, rank, world)
    cards, dedups, bpes = job_streams(toks, opts)
    # what the output depends on besides the corpus and the token settings (checked on their own)
    job = {"tokenizers": cards, "dedup": dedups, "world_size": world,
           "shard_max_bytes": opts.shard_max_bytes, "shard_max_count": opts.shard_max_count}
    fingerprint = hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()
    corpus_errors: list[CorpusError] = []
    utts = load_corpus(corpus, corpus_errors)
    if not utts and not corpus_errors:
        raise ValueError(f"{corpus}: empty corpus (no audio files, or no utterance lines)")
    index = corpus_index(utts)
    suffix = f".r{rank:03d}" if world > 1 else ""
    journal = Journal(out_dir / f"progress{suffix}.jsonl", fingerprint, index_sha(index),
                      token_settings(toks, opts))
    journal.open(out_dir, index, opts.append, write_index=rank == 0,
                 mine=f"shard-r{rank:03d}-*.tar" if world > 1 else "shard-[0-9]*.tar")
    utts = utts[rank * len(utts) // world: (rank + 1) * len(utts) // world]
    probe_errors: list[CorpusError] = []
    items = usable_items(probe_durations(utts, probe_errors), toks, probe_errors)
    if opts.strict and (corpus_errors or probe_errors):
        e = (corpus_errors + probe_errors)[0]
        raise StrictError(f"{e.file}: {e.reason}")
    next_pos = journal.shards[-1]["next_pos"] if journal.shards else 0
    damaged = journal.damaged(out_dir)
    if damaged or next_pos < len(items) or journal.done is None:
        (out_dir / MANIFEST).unlink(missing_ok=True)  # the folder is not a finished job until this run ends
    return JobPlan(items, journal, cards, dedups, corpus_errors, probe_errors, damaged,
                   f"shard-r{rank:03d}-{{:06d}}.tar" if world > 1 else None, bpes)


def usable_items(probed: list[Item], toks, errors: list[CorpusError]) -> list[Item]:
    """The utterances every tokenizer gets a frame of, whose shard keys are distinct; the others go to
    `errors`."""
    items, keys = [], {}
    for it in probed:
        short = [t.name for t in toks if int(t.num_frames(int(it.seconds * t.sample_rate))) == 0]
        key = sample_key(it.utt.id)
        if short:
            errors.append(CorpusError(file=it.utt.path, id=it.utt.id, reason=f"shorter than one token frame "
                                      f"({it.seconds * 1000:.1f} ms) for {', '.join(short)}"))
        elif key in keys:
            errors.append(CorpusError(file=it.utt.path, id=it.utt.id,
                                      reason=f"id maps to the same shard key as '{keys[key]}'"))
        else:
            keys[key] = it.utt.id
            items.append(it)
    return items


class EncodeRun:
    """Encodes items by corpus position, in the planned batches (so a batch's composition, and with it
    every token, is the same in a first run, a resume and a repair): read → featurize → assign → write."""

    def __init__(self, toks, job: JobPlan, opts: EncodeOptions, stop: StopFlag):
        self.toks, self.items, self.opts, self.stop = toks, job.items, opts, stop
        self.position = {it.index: p for p, it in enumerate(job.items)}
        self.buckets = uses_buckets(toks, opts)
        self.plan = plan_batches(job.items, opts.max_batch_seconds, opts.max_batch_size, opts.window,
                                 self.buckets)
        self.cuda = any(t.device.type == "cuda" for t in toks)
        if self.cuda and self.buckets:
            torch.backends.cudnn.benchmark = True  # a few shapes, each autotuned once
        self.builder = SampleBuilder(toks, job.dedups, job.bpes)
        self.oom_splits = 0
        # where the time goes, to name what bounds a run: main thread, then writer thread
        self.stages = dict.fromkeys(("wait for audio", "queue device work", "wait for writer",
                                     "wait for device", "build and write"), 0.0)

    def split_logged(self, n: int) -> None:
        self.oom_splits += 1
        tqdm.write(f"warning: CUDA out of memory on a batch of {n}; splitting it in two")

    def encode(self, lo: int, hi: int, sink) -> None:
        """Encode positions lo..hi-1; `sink(position, entry or CorpusError)` gets each in corpus order
        (in the writer thread). Raises Interrupted at the next sample once SIGTERM/SIGINT was received."""
        todo = [b for b in self.plan if any(lo <= self.position[it.index] < hi for it in b)]
        if not todo:
            return
        if self.stop.signum is not None:
            raise Interrupted(self.stop.signum)
        stream = BatchStream(todo, [t.sample_rate for t in self.toks], self.opts.num_workers,  # read
                             pin=self.cuda, buckets=self.buckets)
        writer = WriterThread(self.builder, self.position, lo, hi, self.opts.strict, self.stop, sink,  # write
                              self.stages)
        writer.start()
        batches, clock = iter(stream), Clock(self.stages)
        try:
            while (batch := clock("wait for audio", next, batches, None)) is not None:
                if self.stop.signum is not None:
                    break  # the writer stops at its next sample
                # featurize → assign
                with self.stop.at_once("inside a batch: finished shards are kept; rerun to resume"):
                    pending = clock("queue device work", launch, self.toks, batch, self.split_logged)
                clock("wait for writer", writer.put, pending)
            clock("wait for writer", writer.finish)
        except BaseException:
            writer.cancel()
            raise
        finally:
            stream.close()


class Clock:
    """Calls a function and adds its wall time to `stages[name]`."""

    def __init__(self, stages: dict[str, float]):
        self.stages = stages

    def __call__(self, name: str, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.stages[name] += time.perf_counter() - t0


class ShardSink:
    """The write stage's end: samples into shards, each finished shard journaled with the counters and the
    load errors up to it; the progress bar in audio seconds."""

    def __init__(self, out_dir: Path, opts: EncodeOptions, job: JobPlan):
        journal, self.items, self.journal = job.journal, job.items, job.journal
        last = journal.shards[-1] if journal.shards else {"next_pos": 0, "num_utterances": 0, "seconds": 0.0,
                                                          "frames": {name: 0 for name in job.cards}}
        self.pos, self.utts, self.seconds = last["next_pos"], last["num_utterances"], last["seconds"]
        self.frames = dict(last["frames"])
        self.resumed = self.utts
        self.errors = [CorpusError(**e) for line in journal.shards for e in line["errors"]]  # load errors
        self.unjournaled: list[CorpusError] = []
        self.writer = ShardWriter(out_dir, opts.shard_max_bytes, opts.shard_max_count,
                                  start_index=len(journal.shards), pattern=job.pattern)
        self.writer.shards = [line["shard"] for line in journal.shards]
        self.writer.on_shard_done = self._journal
        self.progress = Progress(self.items, self.pos, opts.progress)

    def __call__(self, pos: int, entry: Entry | CorpusError) -> None:
        self.pos = pos
        if isinstance(entry, CorpusError):
            self.unjournaled.append(entry)
            self.errors.append(entry)
        else:
            files, seconds, streams = entry
            self.writer.write(sample_key(self.items[pos].utt.id), files)  # may close a shard: journaled
            self.utts += 1
            self.seconds += seconds
            for name, s in streams.items():
                self.frames[name] += s["num_frames"]
        self.pos = pos + 1
        self.progress.advance(self.items[pos].seconds, self.seconds)

    def _journal(self, record: dict) -> None:
        self.journal.append({"shard": record, "next_pos": self.pos, "num_utterances": self.utts,
                             "seconds": self.seconds, "frames": dict(self.frames),
                             "errors": [asdict(e) for e in self.unjournaled]})
        self.unjournaled.clear()

    def close(self) -> None:
        self.writer.close()
        self.progress.close()

    def abort(self) -> None:
        self.writer.abort()
        self.progress.close()


class AudioSecondsBar(tqdm):
    """tqdm counting whole milliseconds of audio (no float drift past the total: no negative ETA, no
    TqdmWarning) and showing seconds; its rate is then × real time."""

    @property
    def format_dict(self):
        d = super().format_dict
        for key in ("n", "total", "initial"):
            d[key] = d[key] / 1000 if d[key] is not None else None
        d["rate"] = d["rate"] / 1000 if d["rate"] is not None else None
        return d


class Progress:
    """The progress bar over this rank's audio seconds, so the ETA holds whatever the utterances' lengths."""

    def __init__(self, items: list[Item], done: int, enabled: bool):
        ms = [round(it.seconds * 1000) for it in items]
        self.t0, self.start_ms = time.perf_counter(), sum(ms[:done])
        self.bar = AudioSecondsBar(total=sum(ms), initial=self.start_ms, unit="s", disable=not enabled,
                                   dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:,.0f}/{total:,.0f} s "
                                   "[{elapsed}<{remaining}{postfix}]")

    def advance(self, seconds: float, total_seconds: float) -> None:
        """One utterance of `seconds` (probed) done; `total_seconds` of audio encoded so far."""
        if self.bar.disable:
            return
        self.bar.update(round(seconds * 1000))
        rate = (self.bar.n - self.start_ms) / 1000 / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{total_seconds / 3600:.2f} h, {rate:,.0f}x RT", refresh=False)

    def close(self) -> None:
        self.bar.close()


def repair_shard(run: EncodeRun, job: JobPlan, i: int, why: str, out_dir: Path) -> None:
    """Write journaled shard `i` again from its utterances (it went missing or no longer matches its
    sha256)."""
    line = job.journal.shards[i]
    name = line["shard"]["name"]
    note(f"{out_dir / name}: {why}; encoding its utterances again")
    lo = job.journal.shards[i - 1]["next_pos"] if i else 0
    writer = ShardWriter(out_dir, 1 << 62, 1 << 62, start_index=i, pattern=job.pattern)

    def sink(pos: int, entry: Entry | CorpusError) -> None:
        if not isinstance(entry, CorpusError):
            writer.write(sample_key(job.items[pos].utt.id), entry[0])

    try:
        run.encode(lo, line["next_pos"], sink)
        records = writer.close()
    except BaseException:
        writer.abort()
        raise
    if [r["name"] for r in records] != [name] or records[0]["num_samples"] != line["shard"]["num_samples"]:
        raise RuntimeError(f"{out_dir / name}: could not be repaired (the corpus no longer gives its "
                           f"samples); write to a new folder")
    job.journal.replace(i, records[0])


def finish_job(corpus, toks, out_dir: Path, job: JobPlan, sink: ShardSink, rank: int,
               world: int) -> EncodeSummary:
    """Close the journal; on rank 0 (once every rank is done) write errors.jsonl and the manifest, last."""
    summary = EncodeSummary(num_utterances=sink.utts, seconds=sink.seconds, frames=sink.frames,
                            shards=sink.writer.shards, resumed_utterances=sink.resumed)
    job.journal.finish({"errors": [asdict(e) for e in sink.unjournaled],
                        "probe_errors": [asdict(e) for e in job.probe_errors],
                        "num_utterances": summary.num_utterances, "seconds": summary.seconds,
                        "frames": summary.frames})
    summary.errors = job.corpus_errors + job.probe_errors + sink.errors
    _barrier(world)
    if rank == 0:
        if world > 1:
            summary = _merge_ranks(out_dir, world, job.corpus_errors, summary)
        write_text_atomic(out_dir / ERRORS_FILE, "".join(e.to_json() + "\n" for e in summary.errors))
        write_manifest(out_dir, {
            "format": "speechtok.shards",
            "format_version": 1,
            "speechtok_version": speechtok.__version__,
            "corpus": os.path.abspath(corpus),
            "corpus_sha256": job.journal.corpus,
            "job": job.journal.fingerprint,
            "tokenizers": portable_card(job.cards, out_dir),  # local model paths relative to the shards
            "dedup": job.dedups[toks[0].name] if len(toks) == 1 else job.dedups,
            "num_utterances": summary.num_utterances,
            "seconds": round(summary.seconds, 6),
            "frames": summary.frames,
            "num_errors": len(summary.errors),
            "shards": [{"name": s["name"], "num_utterances": s["num_samples"], "bytes": s["bytes"],
                        "sha256": s["sha256"]} for s in summary.shards],
        })
    _barrier(world)
    return summary


def _merge_ranks(out_dir: Path, world: int, corpus_errors: list[CorpusError],
                 mine: EncodeSummary) -> EncodeSummary:
    """Rank 0: one summary from every rank's finished journal, shards in rank order."""
    merged = EncodeSummary(frames={k: 0 for k in mine.frames}, errors=list(corpus_errors))
    for r in range(world):
        path = out_dir / f"progress.r{r:03d}.jsonl"
        _, shards, done = read_journal(path)
        if done is None:
            raise RuntimeError(f"{path}: rank {r} did not finish")
        merged.shards += [line["shard"] for line in shards]
        merged.num_utterances += done["num_utterances"]
        merged.seconds += done["seconds"]
        for k, v in done["frames"].items():
            merged.frames[k] += v
        merged.errors += [CorpusError(**e) for e in done["probe_errors"]]
        merged.errors += [CorpusError(**e) for line in shards for e in line["errors"]]
        merged.errors += [CorpusError(**e) for e in done["errors"]]
    return merged


def encode_device_defaults(device: torch.device) -> dict:
    """Defaults that suit the device. On CPU, large padded batches make PyTorch's 1-d convolutions
    slower per second of audio than one utterance at a time (measured: 2x for HuBERT's conv stack), so
    batches stay small there, and with few cores loader processes only take cores from the model
    (measured on 2 cores: 0.7x of a plain loop with 2 workers, 1.1x with none); a GPU wants minutes of
    audio per batch (1-3 minutes: several batches in flight keep it busy) and a loader worker per core."""
    if device.type == "cuda":
        return {"precision": "bf16", "num_workers": len(os.sched_getaffinity(0)), "max_batch_seconds": 180.0}
    return {"precision": "fp32", "num_workers": 0 if (os.cpu_count() or 1) <= 4 else 2,
            "max_batch_seconds": 20.0}
