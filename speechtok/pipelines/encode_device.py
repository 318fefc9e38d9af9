"""The featurize → assign stage of `tok encode`, on the tokenizers' device, in the main thread: a batch goes
to the device in one non-blocking copy per sample rate, every tokenizer's tokens are computed there, and
all of them come back in one non-blocking copy into page-locked memory. Nothing here waits for the
device: the writer thread waits for the copy (`Pending.rows`), so the device never waits for Python and
Python never waits for the device."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from speechtok.pipelines.batching import Batch, Item
from speechtok.tokenizers.semantic import SemanticTokenizer

Rows = dict[int, dict[str, np.ndarray]]  # row of the batch → {tokenizer name: tokens [(n_q,) F]}


@dataclass
class Pending:
    """A batch's tokens on their way to the host. `tokens` (name → [B, (n_q,) F]) may still be filled by
    a copy that `copied` marks; `frames` are each row's frame counts (known on the host)."""

    batch: Batch
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    frames: dict[str, np.ndarray] = field(default_factory=dict)
    copied: torch.cuda.Event | None = None
    ready: Rows | None = None  # rows computed one at a time (after a failure); their failures in `failed`
    failed: list[tuple[Item, str]] = field(default_factory=list)

    def rows(self) -> Rows:
        """Each row's tokens, cut to its frames (waits for the copy: call it in the writer thread)."""
        if self.ready is not None:
            return self.ready
        if self.copied is not None:
            self.copied.synchronize()
        arrays = {name: t.numpy() for name, t in self.tokens.items()}
        return {j: {name: a[j, ..., : self.frames[name][j]] for name, a in arrays.items()}
                for j in range(len(self.batch.items))}


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def speakers_of(items: list[Item] | None) -> list[str | None] | None:
    return None if items is None else [it.utt.speaker for it in items]


def device_tokens(tok, wav: torch.Tensor, lengths: torch.Tensor,
                  items: list[Item]) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [B, (n_q,) F] on the tokenizer's device, frame counts [B] on the host) of a padded batch
    whose `lengths` are on the host (`items`: its utterances, whose speakers an F0 stream normalised per
    speaker reads)."""
    if isinstance(tok, SemanticTokenizer):
        return tok.tokens(wav, lengths)
    if getattr(tok, "uses_speakers", False):
        codes, _ = tok.encode(wav, lengths, speakers_of(items))
        return codes, tok.num_frames(lengths)
    codes, _ = tok.encode(wav, lengths)
    return codes, tok.num_frames(lengths)


def to_host(tokens: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.cuda.Event | None]:
    """The tokens on the host: those on a device gathered (int32) and copied back in one non-blocking copy
    into page-locked memory; on CUDA, the event that marks the copy done."""
    away = {name: t for name, t in tokens.items() if t.device.type != "cpu"}
    if not away:
        return tokens, None
    flat = torch.cat([t.reshape(-1).to(torch.int32) for t in away.values()])
    host = torch.empty(flat.shape, dtype=torch.int32, pin_memory=flat.is_cuda)
    host.copy_(flat, non_blocking=True)
    copied = None
    if flat.is_cuda:
        copied = torch.cuda.Event()
        copied.record()
    out, at = dict(tokens), 0
    for name, t in away.items():
        out[name] = host[at: at + t.numel()].view(t.shape)
        at += t.numel()
    return out, copied


def launch(toks, batch: Batch, on_split) -> Pending:
    """Queue the batch's tokens on the device and their copy back. A batch that fails is encoded again
    synchronously (`encode_alone`), so one bad input costs only itself."""
    if not batch.items:
        return Pending(batch, ready={})
    try:
        out = {t.name: device_tokens(t, *batch.audio[t.sample_rate], batch.items) for t in toks}
    except RuntimeError as e:
        if is_oom(e) and torch.cuda.is_available():
            torch.cuda.empty_cache()
        ready, failed = encode_alone(toks, batch, on_split, halve=is_oom(e))
        return Pending(batch, ready=ready, failed=failed)
    tokens, copied = to_host({name: t for name, (t, _) in out.items()})
    return Pending(batch, tokens, {name: n.numpy() for name, (_, n) in out.items()}, copied)


def row_tokens(tok, wav: torch.Tensor, lengths: torch.Tensor,
               items: list[Item] | None = None) -> list[np.ndarray]:
    """tok.encode_batch, given the rows' speakers when the tokenizer uses them."""
    if getattr(tok, "uses_speakers", False):
        return tok.encode_batch(wav, lengths, speakers_of(items))
    return tok.encode_batch(wav, lengths)


def encode_rows(tok, wav: torch.Tensor, lengths: torch.Tensor, on_split,
                items: list[Item] | None = None) -> list[np.ndarray]:
    """tok.encode_batch, halving the batch on CUDA out-of-memory until it fits."""
    try:
        return row_tokens(tok, wav, lengths, items)
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
        mine = None if items is None else items[part]
        out += encode_rows(tok, wav[part, : int(n.max())], n, on_split, mine)
    return out


def encode_alone(toks, batch: Batch, on_split, halve: bool) -> tuple[Rows, list[tuple[Item, str]]]:
    """(rows, failures) of a batch that failed as a whole: after out-of-memory (`halve`), in halves until
    they fit; otherwise, or if that fails too, one utterance at a time (an utterance that fails alone is
    a failure with its reason)."""
    if halve:
        try:
            outputs = {t.name: encode_rows(t, *batch.audio[t.sample_rate], on_split, batch.items)
                       for t in toks}
            return {j: {name: out[j] for name, out in outputs.items()} for j in range(len(batch.items))}, []
        except RuntimeError:
            pass
    rows, failed = {}, []
    for j, it in enumerate(batch.items):
        try:
            row = {}
            for t in toks:
                wav, lengths = batch.audio[t.sample_rate]
                n = lengths[j: j + 1]
                row[t.name] = row_tokens(t, wav[j: j + 1, : int(n)], n, [it])[0]
            rows[j] = row
        except RuntimeError as e:
            failed.append((it, f"tokenizer failed: {' '.join(str(e).split())[:200]}"))
    return rows, failed
