"""PocketSphinx forced alignment (US English model, CMU dictionary and ARPAbet phones, all shipped in the
`pocketsphinx` wheel): a word-level pass through the transcript, then, for phones, a sub-word pass."""

from __future__ import annotations

import re

import numpy as np

from speechtok.align import Alignment
from speechtok.align.text import spoken_tokens, strip_accents
from speechtok.corpus import Word
from speechtok.eval.alignments import Phone

# A naive letter-to-sound guess for words missing from the dictionary: digraphs first, then letters.
DIGRAPHS = {"th": "TH", "sh": "SH", "ch": "CH", "ph": "F", "ng": "NG", "ck": "K", "ee": "IY", "oo": "UW",
            "qu": "K W", "wh": "W", "ea": "IY", "ou": "AW", "ai": "EY", "ay": "EY", "oa": "OW"}
LETTERS = {c: p.replace("_", " ") for c, p in zip(
    "abcdefghijklmnopqrstuvwxyz", "AE B K D EH F G HH IH JH K L M N AA P K R S T AH V W K_S IY Z".split())}
SILENCE_WORDS = ("<s>", "</s>", "<sil>")
# Wider beams than the decoder's defaults: with the defaults the transcript's path is often pruned away.
BEAMS = dict(beam=1e-100, wbeam=1e-80, pbeam=1e-100)
# Noise at -80 dBFS (3 LSB at 16 bits) added before decoding: digital silence (exact zeros, as in
# synthetic or edited audio) is unlike anything the acoustic model was trained on, and words then slide
# seconds into it. Seeded, so alignments are reproducible.
DITHER = 1e-4


def letter_to_sound(token: str) -> str:
    """ARPAbet guess for an out-of-dictionary token, letter by letter ('' when it has no a-z letters)."""
    letters = re.sub(r"[^a-z]", "", strip_accents(token))
    letters = re.sub(r"([b-df-hj-np-tv-z])\1", r"\1", letters)  # doubled consonants are one sound
    phones, i = [], 0
    while i < len(letters):
        if letters[i: i + 2] in DIGRAPHS:
            phones.append(DIGRAPHS[letters[i: i + 2]])
            i += 2
        else:
            phones.append(LETTERS[letters[i]])
            i += 1
    return " ".join(phones)


class SphinxAligner:
    """Aligns English transcripts with PocketSphinx; one decoder per process, reused across utterances."""

    sample_rate = 16000
    name = "pocketsphinx"

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self.decoder = Decoder(lm=None, loglevel="FATAL", bestpath=False, **BEAMS)
        self.frame_rate = float(self.decoder.config["frate"])

    def _dictionary_tokens(self, words: list[str]) -> tuple[list[str], list[int], list[str], list[str]]:
        """(tokens, the word index of each token, unplaced words, notes); missing tokens get a guess."""
        tokens, owner, unplaced, notes = [], [], [], []
        for i, word in enumerate(words):
            toks = [strip_accents(t) for t in spoken_tokens(word)]
            ok = []
            for t in toks:
                if self.decoder.lookup_word(t) is None:
                    guess = letter_to_sound(t)
                    if not guess:
                        continue
                    self.decoder.add_word(t, guess, True)
                    notes.append(f"'{t}' is not in the CMU dictionary: letter-to-sound guess {guess}")
                ok.append(t)
            if not ok:
                unplaced.append(word)
            tokens += ok
            owner += [i] * len(ok)
        return tokens, owner, unplaced, notes

    def _decode(self, pcm: bytes) -> None:
        """One pass over the utterance from fresh feature state (cepstral mean, noise estimate): otherwise
        each utterance starts from the previous one's, and alignments depend on the order (--jobs, torchrun,
        resume)."""
        d = self.decoder
        d.reinit_feat()
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()

    def align_one(self, wav: np.ndarray, text: str, phones: bool = True) -> Alignment:
        words = text.split()
        tokens, owner, unplaced, notes = self._dictionary_tokens(words)
        if not tokens:
            return Alignment(unplaced=unplaced, notes=notes, error="no alignable words in the transcript")
        noise = np.random.default_rng(0).standard_normal(len(wav)).astype(np.float32) * DITHER
        pcm = (np.clip(wav + noise, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        d, fr = self.decoder, self.frame_rate
        d.set_align_text(" ".join(tokens))
        self._decode(pcm)
        if d.hyp() is None:
            return Alignment(unplaced=unplaced, notes=notes,
                             error="pocketsphinx found no path through the transcript")
        segs: list[tuple[str, float, float, list[Phone]]] = []
        if phones:
            d.set_alignment()
            self._decode(pcm)
            alignment = d.get_alignment()  # its entries point into this object: copy them out while it lives
            for w in alignment:
                ps = [Phone(p.name, p.start / fr, (p.start + p.duration) / fr) for p in w]
                segs.append((w.name, w.start / fr, (w.start + w.duration) / fr, ps))
        else:
            segs = [(s.word, s.start_frame / fr, (s.end_frame + 1) / fr, []) for s in d.seg()]
        placed = [s for s in segs if s[0] not in SILENCE_WORDS and not s[0].startswith(("[", "+"))]
        if len(placed) != len(tokens):
            return Alignment(unplaced=unplaced, notes=notes,
                             error=f"pocketsphinx returned {len(placed)} words for {len(tokens)}")
        spans: dict[int, list[float]] = {}
        for (_, start, end, _), i in zip(placed, owner):
            span = spans.setdefault(i, [start, end])
            span[1] = end
        out_words = [Word(words[i], round(a, 3), round(b, 3)) for i, (a, b) in sorted(spans.items())]
        out_phones = None
        if phones:
            out_phones = [Phone(p.phone, round(p.start, 3), round(p.end, 3)) for s in segs for p in s[3]
                          if p.end > p.start]
        return Alignment(out_words, out_phones, unplaced, notes)

    def align(self, batch: list[tuple[np.ndarray, str]], phones: bool = True) -> list[Alignment]:
        return [self.align_one(wav, text, phones) for wav, text in batch]
