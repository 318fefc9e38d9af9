"""LM probes: perplexity on held-out shards and minimal-pair accuracy in the sWUGGY / sBLIMP / spoken
StoryCloze format (ZeroSpeech 2021, Hassid et al. 2023): a pair scores 1 when the model gives the real item
a higher log-probability than the fake one, 0.5 on a tie; accuracy averages pairs per id, then ids."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from speechtok.corpus import AUDIO_EXTENSIONS, jsonl_objects
from speechtok.lm.sequences import SequenceBuilder
from speechtok.lm.vocab import SpeechVocab


def windows(length: int, max_len: int, stride: int) -> list[tuple[int, int, int]]:
    """Strided sliding windows over a sequence of `length` tokens, as (begin, first, end): window k reads
    tokens [k·stride, k·stride + max_len) and scores only its new targets [first, end), so every target
    t ≥ 1 is scored exactly once, with at least `max_len - stride` tokens of context past the first window.
    `stride` is at most `max_len - 1`: windows then share one token, no overlapping context."""
    if not 1 <= stride <= max_len - 1:
        raise ValueError(f"stride must be in 1..{max_len - 1} (context {max_len} tokens), not {stride}")
    out, first, begin = [], 1, 0
    while first < length:
        end = min(length, begin + max_len)
        out.append((begin, first, end))
        first, begin = end, begin + stride
    return out


@torch.no_grad()
def token_logprobs(model, seqs: list[list[int]], batch_size: int = 8, max_len: int | None = None,
                   stride: int | None = None) -> list[np.ndarray]:
    """log p(x_t | x_<t) for t ≥ 1 of each sequence. Sequences longer than `max_len` (default: the model's
    context) are scored in strided sliding windows (`windows`, Hugging Face's perplexity recipe); the default
    stride, half the context, gives every target past the first window at least half a context."""
    device = next(model.parameters()).device
    max_len = max_len or getattr(model.config, "max_position_embeddings", None) or 2048
    stride = stride or max(1, max_len // 2)
    pieces = []  # (sequence, first target, window begin, window)
    for s, seq in enumerate(seqs):
        for begin, first, end in windows(len(seq), max_len, stride):
            pieces.append((s, first, begin, seq[begin: end]))
    out = [np.zeros(max(len(s) - 1, 0)) for s in seqs]
    order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i][3]))  # similar lengths share a batch
    for b in range(0, len(order), batch_size):
        batch = [pieces[i] for i in order[b: b + batch_size]]
        width = max(len(w) for *_, w in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, (*_, w) in enumerate(batch):
            ids[r, : len(w)] = torch.tensor(w)
            mask[r, : len(w)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1,
                                                          ids[:, 1:, None].to(device))[..., 0].cpu().numpy()
        for r, (s, first, begin, w) in enumerate(batch):  # lp[r, j] scores token begin + j + 1
            out[s][first - 1: begin + len(w) - 1] = lp[r, first - begin - 1: len(w) - 1]
    return out


NEEDS = {"text": "text", "asr": "text", "tts": "text", "interleaved": "words"}  # format → sample field


def perplexity(model, builder: SequenceBuilder, samples, formats: tuple[str, ...] = ("speech",),
               batch_size: int = 8, seed: int = 0) -> dict:
    """Per format: NLL per token and perplexity over all targets, over speech-unit targets and over the
    other (text) targets, of sequences built from held-out shard samples. A format is scored on the samples
    that have what it needs (`text`: the transcript; `interleaved`: word timings), the others counted as
    skipped; none having it is an error, never a silent fallback to speech."""
    rng = np.random.default_rng(seed)
    samples = list(samples)
    vocab, out = builder.vocab, {}
    markers = {vocab.speech_id, vocab.text_id}
    for fmt in formats:
        need = NEEDS.get(fmt)
        kept = [s for s in samples if need is None or s.get(need)]
        if not kept:
            raise ValueError(f"--format {fmt} needs '{need}' in the samples, and none of the {len(samples)} "
                             f"held-out samples has it")
        seqs = [builder.build(fmt, s, rng) for s in kept]
        lps = token_logprobs(model, seqs, batch_size)
        targets = np.concatenate([np.asarray(s[1:]) for s in seqs])
        lp = np.concatenate(lps)
        speech = vocab.is_codec(targets) if builder.speech_kind == "codec" else vocab.is_semantic(targets)
        text = ~speech & ~np.isin(targets, list(markers))
        row = {"sequences": len(seqs), "skipped": len(samples) - len(kept)}
        for name, sel in (("all", np.ones_like(speech)), ("speech", speech), ("text", text)):
            n = int(sel.sum())
            nll = float(-lp[sel].mean()) if n else None
            row[name] = {"tokens": n, "nll": nll, "perplexity": math.exp(nll) if n else None}
        out[fmt] = row
    return out


@dataclass
class ProbeItem:
    """One side of a pair: audio (a file, tokenized with the semantic tokenizer), units, or text."""

    audio: str | None = None
    units: list[int] | None = None
    text: str | None = None


@dataclass
class ProbePair:
    id: str
    real: ProbeItem
    fake: ProbeItem
    group: str | None = None


def _item(raw, base: Path, where: str) -> ProbeItem:
    if isinstance(raw, str):
        raw = {"audio": raw} if raw.lower().endswith(AUDIO_EXTENSIONS) else {"text": raw}
    if not isinstance(raw, dict) or len(set(raw) & {"audio", "units", "text"}) != 1:
        raise ValueError(f"{where}: an item is an audio path, {{'audio'}}, {{'units'}} or {{'text'}}, got "
                         f"{raw!r}")
    if "audio" in raw:
        p = Path(raw["audio"])
        return ProbeItem(audio=str(p if p.is_absolute() else base / p))
    if "units" in raw:
        return ProbeItem(units=[int(u) for u in raw["units"]])
    return ProbeItem(text=str(raw["text"]))


def read_probes(path: str | Path, errors: list[str]) -> list[ProbePair]:
    """Pairs from a JSONL file (`{"id", "real", "fake", "group"?}` a line), or from a ZeroSpeech 2021
    lexical/syntactic folder: `gold.csv` (filename, id, voice, correct, type/subtype) beside the wavs."""
    path = Path(path)
    if path.is_dir():
        return _zerospeech_pairs(path, errors)
    pairs = []
    for where, row in jsonl_objects(path, errors):
        try:
            pairs.append(ProbePair(str(row.get("id", where)), _item(row["real"], path.parent, where),
                                   _item(row["fake"], path.parent, where), row.get("group")))
        except (KeyError, TypeError, ValueError) as e:
            errors.append(str(e) if str(e).startswith(where) else f"{where}: missing or bad field ({e})")
    return pairs


def _zerospeech_pairs(folder: Path, errors: list[str]) -> list[ProbePair]:
    gold = folder / "gold.csv"
    if not gold.exists():
        raise FileNotFoundError(f"{folder}: no gold.csv (expected a ZeroSpeech lexical or syntactic folder)")
    sides: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    with open(gold, newline="") as f:
        for row in csv.DictReader(f):
            sides[(row["id"], row.get("voice", ""))][int(row["correct"])] = row
    pairs = []
    for (pid, voice), rows in sides.items():
        if set(rows) != {0, 1}:
            errors.append(f"{gold}: id {pid} voice {voice}: needs one correct=1 and one correct=0 row")
            continue
        group = rows[1].get("subtype") or rows[1].get("type")
        pairs.append(ProbePair(pid, ProbeItem(audio=str(folder / f"{rows[1]['filename']}.wav")),
                               ProbeItem(audio=str(folder / f"{rows[0]['filename']}.wav")), group))
    return pairs


def item_ids(item: ProbeItem, tokenizer, vocab: SpeechVocab, semantic=None) -> list[int]:
    """BOS, the modality marker and the item's tokens (units deduplicated as the LM was trained)."""
    from speechtok.tokenizers.semantic import run_length

    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    if item.text is not None:
        return bos + [vocab.text_id] + tokenizer(item.text, add_special_tokens=False)["input_ids"]
    if item.audio is not None:
        if semantic is None:
            raise ValueError("audio probes need the semantic tokenizer the LM was trained on (-t KM_DIR)")
        if not Path(item.audio).is_file():
            raise ValueError(f"{item.audio}: no such audio file")
        units = semantic.encode(item.audio)
    else:
        units = np.asarray(item.units, dtype=np.int64)
    if vocab.dedup:
        units = run_length(np.asarray(units))[0]
    return bos + [vocab.speech_id] + vocab.units_to_ids(units).tolist()


def score_pairs(model, tokenizer, vocab: SpeechVocab, pairs: list[ProbePair], semantic=None,
                normalize: bool = False, batch_size: int = 8, errors: list[str] | None = None) -> dict:
    """Accuracy (and per group) of real-vs-fake pairs by summed log-probability (mean per token with
    `normalize`) of each item's tokens after its modality marker. Pairs with unreadable items are skipped
    and reported in `errors`."""
    errors = [] if errors is None else errors
    seqs, kept = [], []
    for p in pairs:
        try:
            seqs += [item_ids(p.real, tokenizer, vocab, semantic),
                     item_ids(p.fake, tokenizer, vocab, semantic)]
            kept.append(p)
        except Exception as e:
            errors.append(f"probe {p.id}: {' '.join(str(e).split())[:200]}")
    # each distinct sequence scored once, in an order that depends only on the set of sequences: a batch's
    # float rounding depends on its rows (per CPU kernel), so identical items always tie exactly and a file
    # with real and fake swapped scores 1 − accuracy
    unique = sorted(set(map(tuple, seqs)), key=lambda q: (-len(q), q))
    by_seq = dict(zip(unique, token_logprobs(model, [list(q) for q in unique], batch_size)))
    lps = [by_seq[tuple(q)] for q in seqs]
    skip = 1 + (tokenizer.bos_token_id is not None)  # the marker is given, not scored
    scores = [lp[skip - 1:].mean() if normalize else lp[skip - 1:].sum() for lp in lps]
    by_id, by_group = defaultdict(list), defaultdict(lambda: defaultdict(list))
    rows = []
    for p, real, fake in zip(kept, scores[0::2], scores[1::2]):
        s = 1.0 if real > fake else 0.5 if real == fake else 0.0
        by_id[p.id].append(s)
        by_group[p.group][p.id].append(s)
        rows.append({"id": p.id, "group": p.group, "real": float(real), "fake": float(fake), "score": s})

    def acc(table) -> float | None:
        return float(np.mean([np.mean(v) for v in table.values()])) if table else None

    groups = {g: acc(t) for g, t in by_group.items() if g is not None}
    return {"accuracy": acc(by_id), "pairs": len(kept), "ids": len(by_id), "groups": groups,
            "normalize": normalize, "per_pair": rows}
