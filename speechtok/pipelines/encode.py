"""`tok encode`: corpus → token shards + manifest. Batches are length-bucketed inside windows of the
corpus, and samples are written in corpus order, so the shards depend only on the corpus and tokenizer."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import speechtok
from speechtok.corpus import CorpusError, load_corpus
from speechtok.pipelines.batching import Item, iterate_batches, plan_batches, probe_durations
from speechtok.shards import ShardWriter, npy_bytes, sample_key, smallest_int_dtype, write_manifest
from speechtok.tokenizers.semantic import SemanticTokenizer, run_length

ERRORS_FILE = "errors.jsonl"


@dataclass
class EncodeOptions:
    dedup: bool | None = None  # None: the tokenizer's default
    max_batch_seconds: float = 600.0
    max_batch_size: int = 128
    num_workers: int = 2
    shard_max_bytes: int = 256 << 20
    shard_max_count: int = 10_000
    window: int = 4096
    progress: bool = True


@dataclass
class EncodeSummary:
    num_utterances: int = 0
    seconds: float = 0.0
    frames: int = 0
    errors: list[CorpusError] = field(default_factory=list)
    wall_seconds: float = 0.0
    shards: list[dict] = field(default_factory=list)

    @property
    def realtime_factor(self) -> float:
        return self.seconds / max(self.wall_seconds, 1e-9)

    def line(self) -> str:
        return (f"{self.num_utterances} utterances, {self.seconds / 3600:.3f} h, {self.frames} frames in "
                f"{len(self.shards)} shards; {self.wall_seconds:.1f} s wall = {self.realtime_factor:,.0f}x real time; "
                f"{len(self.errors)} errors")


def sample_files(item: Item, units: np.ndarray, num_samples: int, tok: SemanticTokenizer,
                 dedup: bool) -> dict[str, bytes]:
    """The tar members of one utterance."""
    dtype = smallest_int_dtype(tok.k - 1)
    meta = {"id": item.utt.id, "duration": num_samples / tok.sample_rate, "sample_rate": tok.sample_rate,
            "frame_rate": tok.frame_rate, "num_frames": int(len(units)), **item.utt.labels()}
    for key in ("start", "end"):
        if getattr(item.utt, key) is not None:
            meta[key] = getattr(item.utt, key)
    files = {"json": json.dumps(meta, ensure_ascii=False, sort_keys=True).encode()}
    if dedup:
        units, durations = run_length(units)
        files["semantic.npy"] = npy_bytes(units.astype(dtype))
        files["semantic_durations.npy"] = npy_bytes(durations.astype(smallest_int_dtype(int(durations.max()))))
    else:
        files["semantic.npy"] = npy_bytes(units.astype(dtype))
    return files


def encode_corpus(corpus: str | Path, tok: SemanticTokenizer, out_dir: str | Path,
                  opts: EncodeOptions | None = None) -> EncodeSummary:
    """Tokenize every utterance of `corpus` (folder or JSONL manifest) into shards under `out_dir`.
    Bad inputs are listed in `out_dir/errors.jsonl` and skipped; the manifest is written last."""
    opts = opts or EncodeOptions()
    dedup = tok.dedup if opts.dedup is None else opts.dedup
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary = EncodeSummary()
    errors = summary.errors
    utts = load_corpus(corpus, errors)
    items = []
    for it in probe_durations(utts, errors):
        if int(tok.num_frames(int(it.seconds * tok.sample_rate))) == 0:
            errors.append(CorpusError(file=it.utt.path, id=it.utt.id,
                                      reason=f"shorter than one token frame ({it.seconds * 1000:.1f} ms)"))
        else:
            items.append(it)
    keys: dict[str, str] = {}
    unique = []
    for it in items:
        key = sample_key(it.utt.id)
        if key in keys:
            errors.append(CorpusError(file=it.utt.path, id=it.utt.id,
                                      reason=f"id maps to the same shard key as '{keys[key]}'"))
            continue
        keys[key] = it.utt.id
        unique.append(it)
    items = unique
    plan = plan_batches(items, opts.max_batch_seconds, opts.max_batch_size, opts.window)

    writer = ShardWriter(out_dir, opts.shard_max_bytes, opts.shard_max_count)
    ready: dict[int, dict[str, bytes] | None] = {}  # corpus index → sample (None: failed)
    next_pos = 0
    bar = tqdm(total=len(items), unit="utt", disable=not opts.progress, dynamic_ncols=True)
    for batch in iterate_batches(plan, tok.sample_rate, opts.num_workers, pin_memory=tok.device.type == "cuda"):
        for it, why in batch.errors:
            errors.append(CorpusError(file=it.utt.path, id=it.utt.id, reason=why))
            ready[it.index] = None
        if batch.items:
            units = tok.encode_batch(batch.wav, batch.lengths)
            for it, u, n in zip(batch.items, units, batch.lengths.tolist()):
                ready[it.index] = sample_files(it, u, n, tok, dedup)
                summary.num_utterances += 1
                summary.seconds += n / tok.sample_rate
                summary.frames += len(u)
        while next_pos < len(items) and items[next_pos].index in ready:
            files = ready.pop(items[next_pos].index)
            if files is not None:
                writer.write(sample_key(items[next_pos].utt.id), files)
            next_pos += 1
        bar.update(len(batch.items) + len(batch.errors))
        elapsed = time.perf_counter() - t0
        bar.set_postfix_str(f"{summary.seconds / 3600:.2f} h, {summary.seconds / max(elapsed, 1e-9):,.0f}x RT")
    bar.close()
    summary.shards = writer.close()
    summary.wall_seconds = time.perf_counter() - t0

    with open(out_dir / ERRORS_FILE, "w") as f:
        for e in errors:
            f.write(e.to_json() + "\n")
    write_manifest(out_dir, {
        "format": "speechtok.shards",
        "format_version": 1,
        "speechtok_version": speechtok.__version__,
        "corpus": str(corpus),
        "tokenizers": {"semantic": tok.card()},
        "dedup": dedup,
        "num_utterances": summary.num_utterances,
        "seconds": round(summary.seconds, 6),
        "frames": {"semantic": summary.frames},
        "num_errors": len(errors),
        "shards": [{"name": s["name"], "num_utterances": s["num_samples"], "bytes": s["bytes"],
                    "sha256": s["sha256"]} for s in summary.shards],
    })
    return summary


def encode_device_defaults(device: torch.device) -> dict:
    """Defaults that suit the device. On CPU, large padded batches make PyTorch's 1-d convolutions
    slower per second of audio than one utterance at a time (measured: 2x for HuBERT's conv stack), so
    batches stay small there; a GPU wants minutes of audio per batch."""
    if device.type == "cuda":
        return {"precision": "bf16", "num_workers": 8, "max_batch_seconds": 600.0}
    return {"precision": "fp32", "num_workers": 2, "max_batch_seconds": 20.0}
