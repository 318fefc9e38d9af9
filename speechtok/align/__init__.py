"""Forced alignment of transcripts to audio: word timings (and phones, when the aligner has them) in the
corpus format `tok encode` and `tok eval tokens` read. Two backends behind one interface: PocketSphinx
(offline US English, words + ARPAbet phones) and CTC models from transformers (any language, words)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from speechtok.corpus import Word
from speechtok.eval.alignments import Phone


@dataclass
class Alignment:
    """One utterance's result; times are seconds from the start of the audio given to the aligner."""

    words: list[Word] = field(default_factory=list)  # placed words, spelled as in the transcript
    phones: list[Phone] | None = None
    unplaced: list[str] = field(default_factory=list)  # transcript words the aligner could not place
    notes: list[str] = field(default_factory=list)  # per-word remarks (e.g. a letter-to-sound guess)
    error: str | None = None  # the whole utterance failed, and why

    def shifted(self, offset: float) -> "Alignment":
        """The same alignment with every time moved by `offset` seconds."""
        return Alignment([Word(w.word, w.start + offset, w.end + offset) for w in self.words],
                         None if self.phones is None else [Phone(p.phone, p.start + offset, p.end + offset)
                                                           for p in self.phones],
                         self.unplaced, self.notes, self.error)


class Aligner(Protocol):
    """Aligns a batch of (mono audio at `sample_rate`, transcript) pairs."""

    sample_rate: int
    name: str

    def align(self, batch: list[tuple[np.ndarray, str]], phones: bool = True) -> list[Alignment]: ...


def load_aligner(spec: str, device: str = "cpu", chunk_seconds: float = 30.0) -> Aligner:
    """'pocketsphinx', or a CTC model (transformers hub id or local directory, optionally prefixed 'ctc:')."""
    if spec == "pocketsphinx":
        from speechtok.align.sphinx import SphinxAligner

        return SphinxAligner()
    from speechtok.align.ctc import CtcAligner

    ref = spec.removeprefix("ctc:")
    if ref.startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(ref)):
        raise FileNotFoundError(f"{ref}: no such model directory")
    return CtcAligner(os.path.expanduser(ref), device=device, chunk_seconds=chunk_seconds)
