"""Acoustic BPE (Shen et al., 2024) over unit or codec-token streams, trained with the Hugging Face
`tokenizers` library, as `codec-bpe` does: each code becomes one Unicode character (codebook q's code c is
chr(offset + q·codebook_size + c)), a codec's frames are flattened frame by frame (q0 q1 … per frame), and
BPE learns merges over whole sequences. Decoding concatenates the merged tokens' characters back into codes,
so it undoes the encoding exactly."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

OFFSET = 0x4E00  # the paper's (CJK ideographs); past the surrogates for large vocabularies
OFFSET_LARGE = 0xE000
SURROGATES = (0xD800, 0xDFFF)
CONFIG = "bpe.json"
TOKENIZER = "tokenizer.json"


def unicode_offset(base_vocab: int) -> int:
    """OFFSET when the base codes fit below the surrogate range, else OFFSET_LARGE (after it)."""
    return OFFSET if OFFSET + base_vocab <= SURROGATES[0] else OFFSET_LARGE


@dataclass
class UnitBPE:
    """Merges over a stream of `num_codebooks` × `codebook_size` codes; ids 0..base_vocab-1 are the codes
    themselves (q·codebook_size + c), the merged tokens follow."""

    tokenizer: object  # tokenizers.Tokenizer
    codebook_size: int
    num_codebooks: int = 1
    stream: str | None = None  # the shards' stream it was trained on

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
        chars = "".join(self.tokenizer.id_to_token(int(i)) for i in ids)
        flat = np.fromiter((ord(ch) for ch in chars), dtype=np.int64, count=len(chars)) - self.offset
        if len(flat) % self.num_codebooks:
            raise ValueError(f"{len(flat)} codes do not make whole frames of {self.num_codebooks} codebooks")
        codes = flat.reshape(-1, self.num_codebooks).T - self.codebook_size * np.arange(self.num_codebooks)[:, None]
        return codes[0] if self.num_codebooks == 1 else codes

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(folder / TOKENIZER))
        meta = {"format": "speechtok.unit_bpe", "codebook_size": self.codebook_size,
                "num_codebooks": self.num_codebooks, "unicode_offset": self.offset, "vocab_size": self.vocab_size}
        (folder / CONFIG).write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "UnitBPE":
        from tokenizers import Tokenizer

        folder = Path(folder)
        meta = json.loads((folder / CONFIG).read_text())
        return cls(Tokenizer.from_file(str(folder / TOKENIZER)), meta["codebook_size"], meta["num_codebooks"],
                   meta.get("trained_on", {}).get("stream"))


def train_bpe(streams: Iterable[np.ndarray], codebook_size: int, vocab_size: int, num_codebooks: int = 1,
              min_frequency: int = 2, max_token_frames: int | None = None) -> UnitBPE:
    """Learn vocab_size − base merges' worth of tokens over `streams` ([F] or [num_codebooks, F] each);
    `max_token_frames` caps how many frames one token may span."""
    from tokenizers import Tokenizer, models, trainers

    base = codebook_size * num_codebooks
    if vocab_size < base:
        raise ValueError(f"vocab_size {vocab_size} is below the {base} base codes")
    shell = UnitBPE(None, codebook_size, num_codebooks)
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
