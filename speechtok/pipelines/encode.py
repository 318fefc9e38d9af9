"""`tok encode`: corpus → token shards + manifest, with one or more tokenizers (semantic units, codecs) in
one pass, each fed audio at its own rate.

Determinism and resume: the corpus is split into windows, each window into length-bucketed batches, and
samples are written in corpus order, so shards depend only on the corpus, the tokenizers and the options.
After each shard is renamed into place, a line in `progress*.jsonl` records it; a rerun of the same command
verifies those shards, skips their utterances (recomputing only the batches that straddle the boundary,
with the same batch composition) and continues, so the result is byte-identical to an uninterrupted run.

Under torchrun, rank r takes the r-th contiguous block of the corpus, writes `shard-rRRR-NNNNNN.tar` and
its own journal; rank 0 merges everything into one manifest when all ranks are done."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import speechtok
from speechtok.corpus import CorpusError, load_corpus
from speechtok.pipelines.batching import Batch, Item, iterate_batches, plan_batches, probe_durations
from speechtok.hub import portable_card
from speechtok.shards import MANIFEST, ShardWriter, npy_bytes, sample_key, sha256_of, smallest_int_dtype, write_manifest
from speechtok.tokenizers.semantic import SemanticTokenizer, run_length

ERRORS_FILE = "errors.jsonl"


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


class Journal:
    """`progress[.rRRR].jsonl`: the job's fingerprint, then one line per completed shard with the counters
    and the load errors up to it; `done` once the rank has finished."""

    def __init__(self, path: Path, fingerprint: str):
        self.path, self.fingerprint = path, fingerprint
        self.shards: list[dict] = []
        self.done: dict | None = None

    def load(self, out_dir: Path) -> None:
        """Keep the journaled shards that still verify; refuse a journal of another job."""
        if not self.path.exists():
            return
        lines = [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]
        if not lines or lines[0].get("job") != self.fingerprint:
            raise ValueError(f"{self.path.parent}: holds an encode job with other inputs or options; rerun the same "
                             "command to resume it, or write to a new folder")
        for line in lines[1:]:
            if "done" in line:
                self.done = line
                continue
            rec = line["shard"]
            path = out_dir / rec["name"]
            if not path.exists() or path.stat().st_size != rec["bytes"] or sha256_of(path) != rec["sha256"]:
                break
            self.shards.append(line)
        if self.done is not None and len(self.shards) != self.done["done"]:
            self.done = None
        self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        lines = [{"job": self.fingerprint}] + self.shards + ([self.done] if self.done else [])
        tmp.write_text("".join(json.dumps(x, ensure_ascii=True) + "\n" for x in lines))
        os.replace(tmp, self.path)

    def append(self, line: dict) -> None:
        if not self.path.exists():
            self._rewrite()
        with open(self.path, "a") as f:
            f.write(json.dumps(line, ensure_ascii=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finish(self, line: dict) -> None:
        self.done = {"done": len(self.shards), **line}
        self.append(self.done)


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
    list) into shards under `out_dir`, resuming a previous run of the same job. Bad inputs go to
    `out_dir/errors.jsonl` and are skipped; the manifest is written last."""
    toks = list(toks) if isinstance(toks, (list, tuple)) else [toks]
    names = [t.name for t in toks]
    if len(set(names)) != len(names):
        raise ValueError(f"two tokenizers write the same field {names}; name codecs with ':name=...'")
    opts = opts or EncodeOptions()
    rank, world = dist_info()
    dedups = {t.name: (t.dedup if opts.dedup is None else opts.dedup) if isinstance(t, SemanticTokenizer) else False
              for t in toks}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cards = {t.name: t.card() for t in toks}
    # what the output depends on; batch sizes are left out since tokens do not depend on batching
    job = {"corpus": str(corpus), "tokenizers": cards, "dedup": dedups, "world_size": world,
           "shard_max_bytes": opts.shard_max_bytes, "shard_max_count": opts.shard_max_count}
    fingerprint = hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()
    if (out_dir / MANIFEST).exists() and json.loads((out_dir / MANIFEST).read_text()).get("job") == fingerprint:
        return _summary_from_manifest(out_dir, t0)

    summary = EncodeSummary(frames={t.name: 0 for t in toks})
    corpus_errors: list[CorpusError] = []
    utts = load_corpus(corpus, corpus_errors)
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
    position = {it.index: p for p, it in enumerate(items)}
    plan = plan_batches(items, opts.max_batch_seconds, opts.max_batch_size, opts.window)

    suffix = f".r{rank:03d}" if world > 1 else ""
    journal = Journal(out_dir / f"progress{suffix}.jsonl", fingerprint)
    mine = f"shard-r{rank:03d}-*.tar" if world > 1 else "shard-*.tar"
    if not journal.path.exists() and any(out_dir.glob(mine)):
        raise ValueError(f"{out_dir}: already holds shards of another job; write to a new folder")
    journal.load(out_dir)
    next_pos, load_errors = 0, []
    if journal.shards:
        last = journal.shards[-1]
        next_pos = last["next_pos"]
        summary.num_utterances, summary.seconds = last["num_utterances"], last["seconds"]
        summary.frames = dict(last["frames"])
        summary.resumed_utterances = summary.num_utterances
        load_errors = [CorpusError(**e) for line in journal.shards for e in line["errors"]]
    writer = ShardWriter(out_dir, opts.shard_max_bytes, opts.shard_max_count, start_index=len(journal.shards),
                         pattern=f"shard-r{rank:03d}-{{:06d}}.tar" if world > 1 else None)
    writer.shards = [line["shard"] for line in journal.shards]
    unjournaled: list[CorpusError] = []

    def on_shard_done(record: dict) -> None:
        line = {"shard": record, "next_pos": state["pos"], "num_utterances": state["utts"],
                "seconds": state["seconds"], "frames": dict(state["frames"]),
                "errors": [asdict(e) for e in unjournaled]}
        journal.append(line)
        journal.shards.append(line)
        unjournaled.clear()

    state = {"pos": next_pos, "utts": summary.num_utterances, "seconds": summary.seconds, "frames": dict(summary.frames)}
    writer.on_shard_done = on_shard_done
    todo = [b for b in plan if any(position[it.index] >= next_pos for it in b)]
    ready: dict[int, tuple[dict[str, bytes], float, dict] | CorpusError] = {}
    cuda = any(t.device.type == "cuda" for t in toks)
    bar = tqdm(total=len(items), initial=next_pos, unit="utt", disable=not opts.progress, dynamic_ncols=True)

    def split_logged(n: int) -> None:
        summary.oom_splits += 1
        tqdm.write(f"warning: CUDA out of memory on a batch of {n}; splitting it in two")

    def fail(it: Item, reason: str) -> None:
        ready[position[it.index]] = CorpusError(file=it.utt.path, id=it.utt.id, reason=reason)
        if opts.strict:
            raise StrictError(f"{it.utt.path}: {reason}")

    for batch in iterate_batches(todo, [t.sample_rate for t in toks], opts.num_workers, pin_memory=cuda):
        for it, why in batch.errors:
            fail(it, why)
        encoded = _encode_batch(toks, batch, split_logged, fail)
        for j, it in enumerate(batch.items):
            if j not in encoded:
                continue
            files, streams = {}, {}
            for t in toks:
                tokens = encoded[j][t.name]
                files.update(token_files(t, tokens, dedups[t.name]))
                streams[t.name] = {"sample_rate": t.sample_rate, "frame_rate": t.frame_rate,
                                   "num_frames": int(tokens.shape[-1])}
            meta = sample_meta(it, batch.seconds[j], streams)
            files = {"json": json.dumps(meta, ensure_ascii=False, sort_keys=True).encode(), **files}
            ready[position[it.index]] = (files, batch.seconds[j], streams)
        while state["pos"] in ready:
            entry = ready.pop(state["pos"])
            it = items[state["pos"]]
            if isinstance(entry, CorpusError):
                unjournaled.append(entry)
                load_errors.append(entry)
            else:
                files, seconds, streams = entry
                writer.write(sample_key(it.utt.id), files)  # may close a shard: journaled with the counters so far
                state["utts"] += 1
                state["seconds"] += seconds
                for name, s in streams.items():
                    state["frames"][name] += s["num_frames"]
            state["pos"] += 1
            bar.update(1)
        elapsed = time.perf_counter() - t0
        done_s = state["seconds"] - summary.seconds
        bar.set_postfix_str(f"{state['seconds'] / 3600:.2f} h, {done_s / max(elapsed, 1e-9):,.0f}x RT")
    bar.close()
    ready.clear()
    writer.close()
    summary.num_utterances, summary.seconds, summary.frames = state["utts"], state["seconds"], state["frames"]
    summary.shards = writer.shards
    journal.finish({"errors": [asdict(e) for e in unjournaled],
                    "probe_errors": [asdict(e) for e in probe_errors],
                    "num_utterances": summary.num_utterances, "seconds": summary.seconds, "frames": summary.frames})
    summary.errors = corpus_errors + probe_errors + load_errors

    _barrier(world)
    if rank == 0:
        if world > 1:
            summary = _merge_ranks(out_dir, world, fingerprint, corpus_errors, summary)
        with open(out_dir / ERRORS_FILE, "w") as f:
            for e in summary.errors:
                f.write(e.to_json() + "\n")
        write_manifest(out_dir, {
            "format": "speechtok.shards",
            "format_version": 1,
            "speechtok_version": speechtok.__version__,
            "corpus": str(corpus),
            "job": fingerprint,
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


def _merge_ranks(out_dir: Path, world: int, fingerprint: str, corpus_errors: list[CorpusError],
                 mine: EncodeSummary) -> EncodeSummary:
    """Rank 0: one summary from every rank's finished journal, shards in rank order."""
    merged = EncodeSummary(frames={k: 0 for k in mine.frames}, errors=list(corpus_errors))
    for r in range(world):
        j = Journal(out_dir / f"progress.r{r:03d}.jsonl", fingerprint)
        j.load(out_dir)
        if j.done is None:
            raise RuntimeError(f"{j.path}: rank {r} did not finish")
        merged.shards += [line["shard"] for line in j.shards]
        merged.num_utterances += j.done["num_utterances"]
        merged.seconds += j.done["seconds"]
        for k, v in j.done["frames"].items():
            merged.frames[k] += v
        merged.errors += [CorpusError(**e) for e in j.done["probe_errors"]]
        merged.errors += [CorpusError(**e) for line in j.shards for e in line["errors"]]
        merged.errors += [CorpusError(**e) for e in j.done["errors"]]
    return merged


def _summary_from_manifest(out_dir: Path, t0: float) -> EncodeSummary:
    """The job is already complete: report it without redoing anything."""
    m = json.loads((out_dir / MANIFEST).read_text())
    errors = [CorpusError(**json.loads(x)) for x in (out_dir / ERRORS_FILE).read_text().splitlines() if x.strip()]
    s = EncodeSummary(num_utterances=m["num_utterances"], seconds=m["seconds"], frames=m["frames"], errors=errors,
                      shards=[{**x, "num_samples": x["num_utterances"]} for x in m["shards"]],
                      resumed_utterances=m["num_utterances"])
    s.wall_seconds = time.perf_counter() - t0
    return s


def encode_device_defaults(device: torch.device) -> dict:
    """Defaults that suit the device. On CPU, large padded batches make PyTorch's 1-d convolutions
    slower per second of audio than one utterance at a time (measured: 2x for HuBERT's conv stack), so
    batches stay small there, and with few cores loader processes only take cores from the model
    (measured on 2 cores: 0.7x of a plain loop with 2 workers, 1.1x with none); a GPU wants minutes of
    audio per batch."""
    if device.type == "cuda":
        return {"precision": "bf16", "num_workers": 8, "max_batch_seconds": 600.0}
    return {"precision": "fp32", "num_workers": 0 if (os.cpu_count() or 1) <= 4 else 2, "max_batch_seconds": 20.0}
