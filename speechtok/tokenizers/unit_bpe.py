"""Acoustic BPE (Shen et al., 2024) over unit or codec-token streams, trained with the Hugging Face
`tokenizers` library, as `codec-bpe` does: each code becomes one Unicode character (codebook q's code c is
chr(offset + q·codebook_size + c)), a codec's frames are flattened frame by frame (q0 q1 … per frame), and
BPE learns merges over whole sequences. Decoding concatenates the merged tokens' characters back into codes,
so it undoes the encoding exactly.

`bpe.json` records what the BPE was trained on (`source`: the stream, its tokenizer's identity, k or n_q ×
codebook size, its frame rate and, for units, whether they were deduplicated); every place that applies a
BPE checks the codes it is given against that record (`UnitBPE.check_source`) and refuses others."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from speechtok.unit_stream import unit_stream

OFFSET = 0x4E00  # the paper's (CJK ideographs); past the surrogates for large vocabularies
OFFSET_LARGE = 0xE000
SURROGATES = (0xD800, 0xDFFF)
CONFIG = "bpe.json"
TOKENIZER = "tokenizer.json"


def unicode_offset(base_vocab: int) -> int:
    """OFFSET when the base codes fit below the surrogate range, else OFFSET_LARGE (after it)."""
    return OFFSET if OFFSET + base_vocab <= SURROGATES[0] else OFFSET_LARGE


CODEC_IDENTITY = ("kind", "model", "weights_sha256", "codebook_size", "sample_rate", "frame_rate")


def codec_sha256(card: dict) -> str:
    """sha256 of what in a codec card decides its codes: the model (its weights' checksum when known, else
    its name) and rates; n_q and bandwidth are left out (the first codebooks do not change with them)."""
    body = {k: card.get(k) for k in CODEC_IDENTITY}
    if body["weights_sha256"]:
        body["model"] = None  # a local folder's path changes when it moves, its checksum does not
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def stream_source(name: str, card: dict, dedup: bool, n_q: int | None = None) -> dict:
    """The record of the codes a stream gives a BPE: semantic units (`unit_stream`: tokenizer sha256, k,
    frame rate, dedup) or the first `n_q` (default: all) codebooks of a codec."""
    if card.get("type") == "semantic":
        return {"stream": name, "type": "semantic", **unit_stream(card, dedup)}
    if card.get("type") == "codec":
        return {"stream": name, "type": "codec", "codec_sha256": codec_sha256(card),
                "codebook_size": int(card["codebook_size"]), "n_q": int(n_q or card["n_q"]),
                "frame_rate": float(card["frame_rate"])}
    raise ValueError(f"stream '{name}' holds {card.get('type')} values, not units or codec tokens")


def _shown(value):
    """A value as an error line shows it (a sha256 shortened)."""
    return f"{value[:12]}..." if isinstance(value, str) and len(value) == 64 else value


@dataclass
class UnitBPE:
    """Merges over a stream of `num_codebooks` × `codebook_size` codes; ids 0..base_vocab-1 are the codes
    themselves (q·codebook_size + c), the merged tokens follow."""

    tokenizer: object  # tokenizers.Tokenizer
    codebook_size: int
    num_codebooks: int = 1
    source: dict | None = None  # what it was trained on (`stream_source`)
    path: str | None = None  # the bpe.json it was loaded from, named in errors

    @property
    def stream(self) -> str | None:
        """The shards' stream it was trained on."""
        return self.source and self.source["stream"]

    def require_source(self) -> str:
        """The bpe.json's name; a ValueError naming it when it records no source (nothing to check)."""
        name = self.path or "the BPE"
        if not self.source:
            raise ValueError(f"{name}: records no source stream (made before speechtok recorded it); train "
                             "it again with `tok bpe train`")
        return name

    def check_source(self, made: dict, where: str) -> None:
        """Refuse, in one line naming bpe.json and both values, codes other than those it was trained on:
        `made` is the `stream_source` record of the codes `where` would give it."""
        name = self.require_source()
        for key, want in self.source.items():
            got = made.get(key)
            if key != "stream" and got != want:
                raise ValueError(f"{name}: trained on {key}={_shown(want)} (stream '{self.stream}'), but "
                                 f"{where} has {key}={_shown(got)}; train a BPE on these codes")

    @property
    def base_vocab(self) -> int:
        return self.codebook_size * self.num_codebooks

    @property
    def offset(self) -> int:
        return unicode_offset(self.base_vocab)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def to_chars(self, codes: np.ndarray) -> str:
        """[F] units or [num_codebooks, F] codec codes → one character per code, frame by frame."""
        codes = np.asarray(codes, dtype=np.int64)
        codes = codes[None] if codes.ndim == 1 else codes
        if codes.shape[0] != self.num_codebooks:
            raise ValueError(f"expected {self.num_codebooks} codebooks, got codes of shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes outside 0..{self.codebook_size - 1}")
        shifted = codes + self.offset + self.codebook_size * np.arange(self.num_codebooks)[:, None]
        return "".join(map(chr, shifted.T.reshape(-1)))

    def encode(self, codes: np.ndarray) -> np.ndarray:
        """Token ids of a stream (int64 [n])."""
        return np.asarray(self.tokenizer.encode(self.to_chars(codes)).ids, dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> np.ndarray:
        """The codes the ids stand for: [F] for units, [num_codebooks, F] for a codec."""
        tokens = [self.tokenizer.id_to_token(int(i)) for i in ids]
        if None in tokens:
            raise ValueError(f"token ids outside 0..{self.vocab_size - 1}")
        chars = "".join(tokens)
        flat = np.fromiter((ord(ch) for ch in chars), dtype=np.int64, count=len(chars)) - self.offset
        if len(flat) % self.num_codebooks:
            raise ValueError(f"{len(flat)} codes do not make whole frames of {self.num_codebooks} codebooks")
        codes = (flat.reshape(-1, self.num_codebooks).T
                 - self.codebook_size * np.arange(self.num_codebooks)[:, None])
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError("the tokens' codes are not whole frames in codebook order "
                             f"0..{self.num_codebooks - 1}")
        return codes[0] if self.num_codebooks == 1 else codes

    def sha256(self) -> str:
        """sha256 of the merges and what they were trained on: BPEs with the same one give the same ids."""
        body = {"tokenizer": self.tokenizer.to_str(), "source": self.source,
                "codebook_size": self.codebook_size, "num_codebooks": self.num_codebooks}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def save(self, folder: str | Path, trained_on: dict | None = None) -> None:
        """tokenizer.json and bpe.json (with `trained_on`: what `tok bpe train` measured), then their
        sha256.json (written last: a save cut short is refused on load, not read as another BPE)."""
        from speechtok.checksums import CHECKSUMS, write_checksums

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CHECKSUMS).unlink(missing_ok=True)
        self.tokenizer.save(str(folder / TOKENIZER))
        meta = {"format": "speechtok.unit_bpe", "codebook_size": self.codebook_size,
                "num_codebooks": self.num_codebooks, "unicode_offset": self.offset,
                "vocab_size": self.vocab_size, "source": self.source}
        if trained_on is not None:
            meta["trained_on"] = trained_on
        (folder / CONFIG).write_text(json.dumps(meta, indent=1) + "\n")
        write_checksums(folder)

    @classmethod
    def load(cls, folder: str | Path) -> "UnitBPE":
        """A saved BPE; a ValueError naming the file when it is not one, or differs from the sha256
        recorded when it was written (checksums.ChecksumError)."""
        from tokenizers import Tokenizer

        from speechtok.checksums import verify_checksums

        path = Path(folder) / CONFIG
        try:
            meta = json.loads(path.read_text())
            bpe = cls(None, int(meta["codebook_size"]), int(meta["num_codebooks"]), meta.get("source"),
                      str(path))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a `tok bpe train` bpe.json ({type(e).__name__}: {e})") from None
        tokenizer = Path(folder) / TOKENIZER
        if not tokenizer.is_file():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(tokenizer))
        verify_checksums(folder)  # a BPE saved before checksums were recorded is read unverified
        try:
            bpe.tokenizer = Tokenizer.from_file(str(tokenizer))
        except Exception as e:  # tokenizers raises a bare Exception for a file it cannot parse
            why = " ".join(str(e).split())[:200]
            raise ValueError(f"{tokenizer}: not a tokenizers file ({why})") from None
        return bpe


def bpe_streams(bpes: Iterable[UnitBPE], cards: dict, dedups: dict[str, bool]) -> dict[str, UnitBPE]:
    """{shard field: BPE} for `tok encode --bpe`: each BPE's tokens become the stream `<its stream>_bpe`;
    a ValueError naming its bpe.json when the job has no such stream or it gives other codes."""
    out: dict[str, UnitBPE] = {}
    for bpe in bpes:
        if bpe.require_source() and bpe.stream not in cards:
            raise ValueError(f"{bpe.path}: trained on stream '{bpe.stream}', this job writes "
                             f"{', '.join(cards)}")
        bpe.check_source(stream_source(bpe.stream, cards[bpe.stream], dedups[bpe.stream]),
                         f"this job's stream '{bpe.stream}'")
        name = f"{bpe.stream}_bpe"
        if name in cards or name in out:
            raise ValueError(f"{bpe.path}: the job already writes a stream '{name}'")
        out[name] = bpe
    return out


def bpe_card(bpe: UnitBPE) -> dict:
    """The shard manifest's card of a BPE stream: which BPE (sha256 of its merges), over which stream."""
    return {"type": "bpe", "of": bpe.stream, "vocab_size": bpe.vocab_size, "codebook_size": bpe.codebook_size,
            "num_codebooks": bpe.num_codebooks, "bpe_sha256": bpe.sha256(), "source": bpe.source}


def train_bpe(streams: Iterable[np.ndarray], codebook_size: int, vocab_size: int, num_codebooks: int = 1,
              min_frequency: int = 2, max_token_frames: int | None = None,
              source: dict | None = None) -> UnitBPE:
    """Learn vocab_size − base merges' worth of tokens over `streams` ([F] or [num_codebooks, F] each);
    `max_token_frames` caps how many frames one token may span; `source` records what the streams are."""
    from tokenizers import Tokenizer, models, trainers

    base = codebook_size * num_codebooks
    if vocab_size < base:
        raise ValueError(f"vocab_size {vocab_size} is below the {base} base codes")
    shell = UnitBPE(None, codebook_size, num_codebooks, source)
    alphabet = [chr(shell.offset + i) for i in range(base)]
    tok = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=alphabet, limit_alphabet=base, special_tokens=[],
                                  max_token_length=None if max_token_frames is None
                                  else max_token_frames * num_codebooks)
    tok.train_from_iterator((shell.to_chars(s) for s in streams), trainer=trainer)
    shell.tokenizer = tok
    order = [tok.token_to_id(ch) for ch in alphabet]
    if order != list(range(base)):  # ids 0..base-1 must be the codes themselves
        raise RuntimeError("the BPE base vocabulary is not in code order")
    return shell


class BPEStats:
    """What BPE does to a stream: codes vs tokens (sequence-length reduction) and the bitrate of the tokens,
    nominal (log2 of the vocabulary per token) and from their unigram entropy."""

    def __init__(self, bpe: UnitBPE):
        self.bpe, self.codes, self.tokens, self.seconds = bpe, 0, 0, 0.0
        self.counts = np.zeros(bpe.vocab_size, dtype=np.int64)

    def add(self, codes: np.ndarray, seconds: float) -> None:
        ids = self.bpe.encode(codes)
        self.codes += int(np.asarray(codes).size)
        self.tokens += len(ids)
        self.seconds += seconds
        self.counts += np.bincount(ids, minlength=len(self.counts))

    def result(self) -> dict:
        p = self.counts[self.counts > 0] / max(self.tokens, 1)
        per_s = self.tokens / max(self.seconds, 1e-9)
        return {"vocab_size": self.bpe.vocab_size, "codes": self.codes, "tokens": self.tokens,
                "length_reduction": self.codes / max(self.tokens, 1), "tokens_per_second": per_s,
                "nominal_bps": per_s * math.log2(self.bpe.vocab_size),
                "entropy_bps": per_s * float(-(p * np.log2(p)).sum())}
