"""`tok encode`: corpus → token shards + manifest, with one or more tokenizers (semantic units, codecs) in
one pass, each fed audio at its own rate. Batches are length-bucketed inside windows of the corpus, and
samples are written in corpus order, so the shards depend only on the corpus and the tokenizers."""

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
    dedup: bool | None = None  # None: each semantic tokenizer's default
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
    frames: dict[str, int] = field(default_factory=dict)
    errors: list[CorpusError] = field(default_factory=list)
    wall_seconds: float = 0.0
    shards: list[dict] = field(default_factory=list)

    @property
    def realtime_factor(self) -> float:
        return self.seconds / max(self.wall_seconds, 1e-9)

    def line(self) -> str:
        frames = ", ".join(f"{n} {name} frames" for name, n in self.frames.items())
        return (f"{self.num_utterances} utterances, {self.seconds / 3600:.3f} h, {frames} in {len(self.shards)} "
                f"shards; {self.wall_seconds:.1f} s wall = {self.realtime_factor:,.0f}x real time; "
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


def encode_corpus(corpus: str | Path, toks, out_dir: str | Path, opts: EncodeOptions | None = None) -> EncodeSummary:
    """Tokenize every utterance of `corpus` (folder or JSONL manifest) with `toks` (one tokenizer or a
    list) into shards under `out_dir`. Bad inputs go to `out_dir/errors.jsonl` and are skipped; the
    manifest is written last."""
    toks = list(toks) if isinstance(toks, (list, tuple)) else [toks]
    names = [t.name for t in toks]
    if len(set(names)) != len(names):
        raise ValueError(f"two tokenizers write the same field {names}; name codecs with ':name=...'")
    opts = opts or EncodeOptions()
    dedups = {t.name: (t.dedup if opts.dedup is None else opts.dedup) if isinstance(t, SemanticTokenizer) else False
              for t in toks}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary = EncodeSummary(frames={t.name: 0 for t in toks})
    errors = summary.errors
    utts = load_corpus(corpus, errors)
    items, keys = [], {}
    for it in probe_durations(utts, errors):
        short = [t.name for t in toks if int(t.num_frames(int(it.seconds * t.sample_rate))) == 0]
        key = sample_key(it.utt.id)
        if short:
            errors.append(CorpusError(file=it.utt.path, id=it.utt.id,
                                      reason=f"shorter than one token frame ({it.seconds * 1000:.1f} ms) for {', '.join(short)}"))
        elif key in keys:
            errors.append(CorpusError(file=it.utt.path, id=it.utt.id,
                                      reason=f"id maps to the same shard key as '{keys[key]}'"))
        else:
            keys[key] = it.utt.id
            items.append(it)
    plan = plan_batches(items, opts.max_batch_seconds, opts.max_batch_size, opts.window)

    writer = ShardWriter(out_dir, opts.shard_max_bytes, opts.shard_max_count)
    ready: dict[int, dict[str, bytes] | None] = {}  # corpus index → sample (None: failed)
    next_pos = 0
    cuda = any(t.device.type == "cuda" for t in toks)
    bar = tqdm(total=len(items), unit="utt", disable=not opts.progress, dynamic_ncols=True)
    for batch in iterate_batches(plan, [t.sample_rate for t in toks], opts.num_workers, pin_memory=cuda):
        for it, why in batch.errors:
            errors.append(CorpusError(file=it.utt.path, id=it.utt.id, reason=why))
            ready[it.index] = None
        if batch.items:
            outputs = {t.name: t.encode_batch(*batch.audio[t.sample_rate]) for t in toks}
            for j, it in enumerate(batch.items):
                files, streams = {}, {}
                for t in toks:
                    tokens = outputs[t.name][j]
                    files.update(token_files(t, tokens, dedups[t.name]))
                    streams[t.name] = {"sample_rate": t.sample_rate, "frame_rate": t.frame_rate,
                                       "num_frames": int(tokens.shape[-1])}
                    summary.frames[t.name] += int(tokens.shape[-1])
                meta = sample_meta(it, batch.seconds[j], streams)
                ready[it.index] = {"json": json.dumps(meta, ensure_ascii=False, sort_keys=True).encode(), **files}
                summary.num_utterances += 1
                summary.seconds += batch.seconds[j]
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
        "tokenizers": {t.name: t.card() for t in toks},
        "dedup": dedups[toks[0].name] if len(toks) == 1 else dedups,
        "num_utterances": summary.num_utterances,
        "seconds": round(summary.seconds, 6),
        "frames": summary.frames,
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
