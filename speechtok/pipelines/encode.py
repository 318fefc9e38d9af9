"""`tok encode`: corpus → token shards + manifest, with one or more tokenizers (semantic units, codecs) in
one pass, each fed audio at its own rate.

Determinism and resume: the corpus is split into windows, each window into length-bucketed batches, and
samples are written in corpus order, so shards depend only on the corpus, the tokenizers and the options.
After each shard is renamed into place, a line in `progress*.jsonl` records it; a rerun of the same command
verifies those shards (writing a damaged one again), skips their utterances (recomputing only the batches
that straddle the boundary, with the same batch composition) and continues, so the result is byte-identical
to an uninterrupted run. The journal, the corpus fingerprint, the folder lock and signal handling are in
`encode_job`.

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
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

import speechtok
from speechtok.corpus import CorpusError, load_corpus
from speechtok.folder_lock import FolderLock
from speechtok.pipelines.batching import Batch, Item, iterate_batches, plan_batches, probe_durations
from speechtok.pipelines.encode_job import (ERRORS_FILE, LOCK_FILE, Interrupted, Journal, StopFlag, corpus_index,
                                            index_sha, note, read_journal, remove_temporaries, stop_on_signals)
from speechtok.hub import portable_card
from speechtok.shards import (MANIFEST, ShardWriter, npy_bytes, sample_key, smallest_int_dtype, write_manifest,
                              write_text_atomic)
from speechtok.tokenizers.semantic import SemanticTokenizer, run_length


class StrictError(Exception):
    """--strict: the first bad input stops the job (what was written stays, and a rerun resumes)."""


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

    def check(self) -> None:
        """Refuse options that cannot make shards (a usage error, before anything is written)."""
        for name, low in (("shard_max_count", 1), ("shard_max_bytes", 1), ("max_batch_size", 1), ("window", 1),
                          ("num_workers", 0)):
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

    @property
    def realtime_factor(self) -> float:
        return self.seconds / max(self.wall_seconds, 1e-9)

    def line(self) -> str:
        frames = ", ".join(f"{n} {name} frames" for name, n in self.frames.items())
        resumed = f" ({self.resumed_utterances} from a previous run)" if self.resumed_utterances else ""
        return (f"{self.num_utterances} utterances{resumed}, {self.seconds / 3600:.3f} h, {frames} in "
                f"{len(self.shards)} shards; {self.wall_seconds:.1f} s wall = {self.realtime_factor:,.0f}x real time; "
                f"{len(self.errors)} errors")


def token_files(tok, tokens: np.ndarray, dedup: bool) -> dict[str, bytes]:
    """`<name>.npy` in the smallest integer dtype (codecs: [n_q, F]); with dedup, semantic units are
    run-length encoded and `<name>_durations.npy` holds the run lengths."""
    top = (tok.k if isinstance(tok, SemanticTokenizer) else tok.codebook_size) - 1
    if dedup and isinstance(tok, SemanticTokenizer):
        units, durations = run_length(tokens)
        return {f"{tok.name}.npy": npy_bytes(units.astype(smallest_int_dtype(top))),
                f"{tok.name}_durations.npy": npy_bytes(durations.astype(smallest_int_dtype(int(durations.max()))))}
    return {f"{tok.name}.npy": npy_bytes(tokens.astype(smallest_int_dtype(top)))}


class CodeUsage:
    """Which codes each codebook of a stream has written in this run: a random-init or broken codec writes
    (nearly) one code, which `warning` reports once enough frames have passed to fill more."""

    def __init__(self, name: str, codebook_size: int):
        self.name, self.size = name, codebook_size
        self.seen: np.ndarray | None = None
        self.frames = 0

    def add(self, tokens: np.ndarray) -> None:
        t = np.atleast_2d(tokens)
        if self.seen is None:
            self.seen = np.zeros((len(t), self.size), dtype=bool)
        self.seen[np.arange(len(t))[:, None], t] = True
        self.frames += t.shape[-1]

    def warning(self, share: float = 0.02) -> str | None:
        """One line if, after at least one frame per code, some codebook used under `share` of its codes."""
        if self.seen is None or self.frames < self.size:
            return None
        used = self.seen.sum(1)
        if used.min() >= max(2, share * self.size):
            return None
        return (f"warning: {self.name}: codebooks use {', '.join(map(str, used))} of {self.size} codes over "
                f"{self.frames:,} frames (under {share:.0%}): a random-init or broken tokenizer?")


def sample_meta(item: Item, seconds: float, streams: dict[str, dict]) -> dict:
    """The sample's json: id, duration, labels, and per tokenizer its rates and frame count (the first
    tokenizer's also at the top level)."""
    first = next(iter(streams.values()))
    meta = {"id": item.utt.id, "duration": round(seconds, 6), **first, **item.utt.labels()}
    if len(streams) > 1:
        meta["streams"] = streams
    for key in ("start", "end"):
        if getattr(item.utt, key) is not None:
            meta[key] = getattr(item.utt, key)
    return meta


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def encode_rows(tok, wav: torch.Tensor, lengths: torch.Tensor, on_split) -> list[np.ndarray]:
    """tok.encode_batch, halving the batch on CUDA out-of-memory until it fits."""
    try:
        return tok.encode_batch(wav, lengths)
    except RuntimeError as e:
        if not is_oom(e) or len(lengths) == 1:
            raise
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    on_split(len(lengths))
    half = len(lengths) // 2
    out = []
    for part in (slice(0, half), slice(half, None)):
        n = lengths[part]
        out += encode_rows(tok, wav[part, : int(n.max())], n, on_split)
    return out


def dist_info() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        dist.barrier()


def encode_corpus(corpus: str | Path, toks, out_dir: str | Path, opts: EncodeOptions | None = None) -> EncodeSummary:
    """Tokenize every utterance of `corpus` (folder or JSONL manifest) with `toks` (one tokenizer or a
    list) into shards under `out_dir`, resuming a previous run of the same job and repairing shards that
    no longer match their checksum. Bad inputs go to `out_dir/errors.jsonl` and are skipped; the manifest is
    written last. Raises FolderLocked while another job writes there, JobMismatch for another job or a
    changed corpus, Interrupted after SIGTERM/SIGINT (the output stays resumable)."""
    toks = list(toks) if isinstance(toks, (list, tuple)) else [toks]
    names = [t.name for t in toks]
    if len(set(names)) != len(names):
        raise ValueError(f"two tokenizers write the same field {names}; name them with ':name=NAME' "
                         "(DIR:name=NAME, KIND:MODEL:name=NAME)")
    opts = opts or EncodeOptions()
    opts.check()
    rank, world = dist_info()
    if opts.append and world > 1:
        raise ValueError("--append runs as a single process (the ranks' blocks would move)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with FolderLock(out_dir / f"{LOCK_FILE}.r{rank:03d}", "tok encode"), stop_on_signals() as stop:
        return _encode_locked(corpus, toks, out_dir, opts, rank, world, stop)


def _encode_locked(corpus, toks, out_dir: Path, opts: EncodeOptions, rank: int, world: int,
                   stop: StopFlag) -> EncodeSummary:
    t0 = time.perf_counter()
    remove_temporaries(out_dir, rank, world)
    dedups = {t.name: (t.dedup if opts.dedup is None else opts.dedup) if isinstance(t, SemanticTokenizer) else False
              for t in toks}
    cards = {t.name: t.card() for t in toks}
    # what the output depends on besides the corpus; batch sizes are left out since tokens do not depend on batching
    job = {"tokenizers": cards, "dedup": dedups, "world_size": world,
           "shard_max_bytes": opts.shard_max_bytes, "shard_max_count": opts.shard_max_count}
    fingerprint = hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()

    summary = EncodeSummary(frames={t.name: 0 for t in toks})
    corpus_errors: list[CorpusError] = []
    utts = load_corpus(corpus, corpus_errors)
    if not utts and not corpus_errors:
        raise ValueError(f"{corpus}: empty corpus (no audio files, or no utterance lines)")
    index = corpus_index(utts)
    suffix = f".r{rank:03d}" if world > 1 else ""
    journal = Journal(out_dir / f"progress{suffix}.jsonl", fingerprint, index_sha(index))
    journal.open(out_dir, index, opts.append, write_index=rank == 0,
                 mine=f"shard-r{rank:03d}-*.tar" if world > 1 else "shard-[0-9]*.tar")

    utts = utts[rank * len(utts) // world: (rank + 1) * len(utts) // world]
    probe_errors: list[CorpusError] = []
    items, keys = [], {}
    for it in probe_durations(utts, probe_errors):
        short = [t.name for t in toks if int(t.num_frames(int(it.seconds * t.sample_rate))) == 0]
        key = sample_key(it.utt.id)
        if short:
            probe_errors.append(CorpusError(file=it.utt.path, id=it.utt.id, reason=f"shorter than one token frame "
                                            f"({it.seconds * 1000:.1f} ms) for {', '.join(short)}"))
        elif key in keys:
            probe_errors.append(CorpusError(file=it.utt.path, id=it.utt.id,
                                            reason=f"id maps to the same shard key as '{keys[key]}'"))
        else:
            keys[key] = it.utt.id
            items.append(it)
    if opts.strict and (corpus_errors or probe_errors):
        e = (corpus_errors + probe_errors)[0]
        raise StrictError(f"{e.file}: {e.reason}")
    enc = _Encoder(toks, items, dedups, opts, stop, summary)
    pattern = f"shard-r{rank:03d}-{{:06d}}.tar" if world > 1 else None

    damaged = journal.damaged(out_dir)
    next_pos = journal.shards[-1]["next_pos"] if journal.shards else 0
    if damaged or next_pos < len(items) or journal.done is None:
        (out_dir / MANIFEST).unlink(missing_ok=True)  # the folder is not a finished job until this run ends
    for i, why in damaged:
        _repair_shard(enc, journal, i, why, out_dir, pattern)

    load_errors = [CorpusError(**e) for line in journal.shards for e in line["errors"]]
    if journal.shards:
        last = journal.shards[-1]
        summary.num_utterances, summary.seconds = last["num_utterances"], last["seconds"]
        summary.frames = dict(last["frames"])
        summary.resumed_utterances = summary.num_utterances
    writer = ShardWriter(out_dir, opts.shard_max_bytes, opts.shard_max_count, start_index=len(journal.shards),
                         pattern=pattern)
    writer.shards = [line["shard"] for line in journal.shards]
    unjournaled: list[CorpusError] = []
    state = {"pos": next_pos, "utts": summary.num_utterances, "seconds": summary.seconds,
             "frames": dict(summary.frames)}

    def on_shard_done(record: dict) -> None:
        journal.append({"shard": record, "next_pos": state["pos"], "num_utterances": state["utts"],
                        "seconds": state["seconds"], "frames": dict(state["frames"]),
                        "errors": [asdict(e) for e in unjournaled]})
        unjournaled.clear()

    writer.on_shard_done = on_shard_done
    bar = tqdm(total=len(items), initial=next_pos, unit="utt", disable=not opts.progress, dynamic_ncols=True)
    try:
        for pos, entry in enc.entries(next_pos, len(items), opts.strict):
            state["pos"] = pos
            if isinstance(entry, CorpusError):
                unjournaled.append(entry)
                load_errors.append(entry)
            else:
                files, seconds, streams = entry
                # may close a shard: journaled with the counters so far
                writer.write(sample_key(items[pos].utt.id), files)
                state["utts"] += 1
                state["seconds"] += seconds
                for name, s in streams.items():
                    state["frames"][name] += s["num_frames"]
            state["pos"] = pos + 1
            bar.update(1)
            done_s = state["seconds"] - summary.seconds
            bar.set_postfix_str(f"{state['seconds'] / 3600:.2f} h, "
                                f"{done_s / max(time.perf_counter() - t0, 1e-9):,.0f}x RT", refresh=False)
        writer.close()
    except BaseException:
        writer.abort()  # no .tmp left behind; the journal holds every finished shard
        raise
    finally:
        bar.close()
    for line in filter(None, (u.warning() for u in enc.usage.values())):
        print(line, file=sys.stderr)
    summary.num_utterances, summary.seconds, summary.frames = state["utts"], state["seconds"], state["frames"]
    summary.shards = writer.shards
    journal.finish({"errors": [asdict(e) for e in unjournaled],
                    "probe_errors": [asdict(e) for e in probe_errors],
                    "num_utterances": summary.num_utterances, "seconds": summary.seconds, "frames": summary.frames})
    summary.errors = corpus_errors + probe_errors + load_errors

    _barrier(world)
    if rank == 0:
        if world > 1:
            summary = _merge_ranks(out_dir, world, corpus_errors, summary)
        write_text_atomic(out_dir / ERRORS_FILE, "".join(e.to_json() + "\n" for e in summary.errors))
        write_manifest(out_dir, {
            "format": "speechtok.shards",
            "format_version": 1,
            "speechtok_version": speechtok.__version__,
            "corpus": os.path.abspath(corpus),
            "corpus_sha256": journal.corpus,
            "job": journal.fingerprint,
            "tokenizers": portable_card(cards, out_dir),  # local model paths relative to the shards
            "dedup": dedups[toks[0].name] if len(toks) == 1 else dedups,
            "num_utterances": summary.num_utterances,
            "seconds": round(summary.seconds, 6),
            "frames": summary.frames,
            "num_errors": len(summary.errors),
            "shards": [{"name": s["name"], "num_utterances": s["num_samples"], "bytes": s["bytes"],
                        "sha256": s["sha256"]} for s in summary.shards],
        })
    _barrier(world)
    summary.wall_seconds = time.perf_counter() - t0
    return summary


class _Encoder:
    """Encodes items by corpus position, in the planned batches (so a batch's composition, and with it
    every token, is the same in a first run, a resume and a repair)."""

    def __init__(self, toks, items: list[Item], dedups: dict, opts: EncodeOptions, stop: StopFlag,
                 summary: EncodeSummary):
        self.toks, self.items, self.dedups, self.stop, self.summary = toks, items, dedups, stop, summary
        self.position = {it.index: p for p, it in enumerate(items)}
        self.plan = plan_batches(items, opts.max_batch_seconds, opts.max_batch_size, opts.window)
        self.num_workers = opts.num_workers
        self.usage = {t.name: CodeUsage(t.name, t.k if isinstance(t, SemanticTokenizer) else t.codebook_size)
                      for t in toks}  # codes written in this run, for the low-usage warning

    def split_logged(self, n: int) -> None:
        self.summary.oom_splits += 1
        tqdm.write(f"warning: CUDA out of memory on a batch of {n}; splitting it in two")

    def entries(self, lo: int, hi: int, strict: bool) -> Iterator[tuple[int, tuple | CorpusError]]:
        """(position, (files, seconds, streams) or CorpusError) for positions lo..hi-1, in order. Raises
        Interrupted at the next sample once SIGTERM/SIGINT was received."""
        toks, position = self.toks, self.position
        todo = [b for b in self.plan if any(lo <= position[it.index] < hi for it in b)]
        ready: dict[int, tuple | CorpusError] = {}
        nxt = lo
        cuda = any(t.device.type == "cuda" for t in toks)

        def fail(it: Item, reason: str) -> None:
            if lo <= position[it.index] < hi:
                ready[position[it.index]] = CorpusError(file=it.utt.path, id=it.utt.id, reason=reason)
                if strict:
                    raise StrictError(f"{it.utt.path}: {reason}")

        if todo and self.stop.signum is not None:
            raise Interrupted(self.stop.signum)
        for batch in iterate_batches(todo, [t.sample_rate for t in toks], self.num_workers, pin_memory=cuda):
            for it, why in batch.errors:
                fail(it, why)
            encoded = _encode_batch(toks, batch, self.split_logged, fail)
            for j, it in enumerate(batch.items):
                if j not in encoded or not lo <= position[it.index] < hi:
                    continue
                files, streams = {}, {}
                for t in toks:
                    tokens = encoded[j][t.name]
                    self.usage[t.name].add(tokens)
                    files.update(token_files(t, tokens, self.dedups[t.name]))
                    streams[t.name] = {"sample_rate": t.sample_rate, "frame_rate": t.frame_rate,
                                       "num_frames": int(tokens.shape[-1])}
                meta = sample_meta(it, batch.seconds[j], streams)
                files = {"json": json.dumps(meta, ensure_ascii=False, sort_keys=True).encode(), **files}
                ready[position[it.index]] = (files, batch.seconds[j], streams)
            while nxt in ready:
                yield nxt, ready.pop(nxt)
                nxt += 1
                if self.stop.signum is not None and nxt < hi:  # checked after every sample written
                    raise Interrupted(self.stop.signum)


def _repair_shard(enc: _Encoder, journal: Journal, i: int, why: str, out_dir: Path, pattern: str | None) -> None:
    """Write journaled shard `i` again from its utterances (it went missing or no longer matches its sha256)."""
    line = journal.shards[i]
    name = line["shard"]["name"]
    note(f"{out_dir / name}: {why}; encoding its utterances again")
    lo = journal.shards[i - 1]["next_pos"] if i else 0
    writer = ShardWriter(out_dir, 1 << 62, 1 << 62, start_index=i, pattern=pattern)
    try:
        for pos, entry in enc.entries(lo, line["next_pos"], strict=False):
            if not isinstance(entry, CorpusError):
                writer.write(sample_key(enc.items[pos].utt.id), entry[0])
        records = writer.close()
    except BaseException:
        writer.abort()
        raise
    if [r["name"] for r in records] != [name] or records[0]["num_samples"] != line["shard"]["num_samples"]:
        raise RuntimeError(f"{out_dir / name}: could not be repaired (the corpus no longer gives its samples); "
                           "write to a new folder")
    journal.replace(i, records[0])


def _encode_batch(toks, batch: Batch, on_split, fail) -> dict[int, dict[str, np.ndarray]]:
    """Row j → {tokenizer name: tokens}. A batch that fails for another reason than memory is retried
    one utterance at a time, so one bad input costs only itself."""
    if not batch.items:
        return {}
    try:
        outputs = {t.name: encode_rows(t, *batch.audio[t.sample_rate], on_split) for t in toks}
        return {j: {name: out[j] for name, out in outputs.items()} for j in range(len(batch.items))}
    except RuntimeError:
        pass  # retried below one utterance at a time (an utterance that alone runs out of memory fails)
    result = {}
    for j, it in enumerate(batch.items):
        try:
            row = {}
            for t in toks:
                wav, lengths = batch.audio[t.sample_rate]
                n = lengths[j: j + 1]
                row[t.name] = t.encode_batch(wav[j: j + 1, : int(n)], n)[0]
            result[j] = row
        except RuntimeError as e:
            fail(it, f"tokenizer failed: {' '.join(str(e).split())[:200]}")
    return result


def _merge_ranks(out_dir: Path, world: int, corpus_errors: list[CorpusError], mine: EncodeSummary) -> EncodeSummary:
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
    audio per batch."""
    if device.type == "cuda":
        return {"precision": "bf16", "num_workers": 8, "max_batch_seconds": 600.0}
    return {"precision": "fp32", "num_workers": 0 if (os.cpu_count() or 1) <= 4 else 2, "max_batch_seconds": 20.0}
