"""Training sequences from shard samples and text, as token ids of an extended LM vocabulary.
With pitch / style streams in the vocabulary (expressive), every speech span merges them with the units by
time (`speechtok.prosody.expressive`, Spirit-LM Expressive's order).

    speech       [SPEECH] s s s … </s>
    text         [TEXT] t t t … </s>
    interleaved  [TEXT] t t [SPEECH] s s s [TEXT] t … </s>   (switches at word boundaries, Spirit-LM style)
    asr          [SPEECH] s s s [TEXT] t t t </s>
    tts          [TEXT] t t t [SPEECH] s s s </s>

Sequences start with the tokenizer's BOS when it has one. Speech spans cut at word boundaries: a span of
words i..j covers the frames from word i's start to word j+1's start (the first span from 0, the last
to the end), so pauses stay with the speech before the next word and every frame lands in one span. Text
spans hold their words' tokens as in the running transcript (`word_ids`), whatever the tokenizer's way of
marking word starts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from speechtok.lm.vocab import SpeechVocab
from speechtok.prosody.expressive import expressive_ids
from speechtok.tokenizers.semantic import run_length
from speechtok.unit_stream import unit_stream

@dataclass
class Span:
    """One modality run of an interleaved sequence: words [first, last) and, for speech, frames [f0, f1)."""

    modality: str
    first: int
    last: int
    f0: int = 0
    f1: int = 0


class SequenceBuilder:
    """Turns samples (as `read_shards` yields them) and text lines into token-id sequences; the speech
    tokens are units, or with `speech="codec"` the vocabulary's codec frames (`SpeechVocab.codec_sequence`);
    by default what the LM was trained on (`SpeechVocab.speech`)."""

    def __init__(self, vocab: SpeechVocab, tokenizer, dedup: bool | None = None,
                 span_words: tuple[int, int] = (1, 10), speech: str | None = None):
        speech = speech or vocab.speech  # default: what the LM was trained on
        self.vocab, self.tok, self.speech_kind = vocab, tokenizer, speech
        self.dedup = vocab.dedup if dedup is None else dedup
        self.span_words = span_words
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.eos = [tokenizer.eos_token_id]
        self.rate = vocab.frame_rate
        if speech == "codec":
            if not vocab.codec_stream or vocab.expressive:
                raise ValueError("data.speech: codec needs an LM vocabulary with codec tokens (extend-vocab "
                                 "--codec) and no pitch / style tokens")
            self.rate = float(vocab.tokenizer_cards[vocab.codec_stream]["frame_rate"])
        elif vocab.bpe is not None:  # the BPE must be given the units it was trained on
            card = vocab.tokenizer_cards.get(vocab.semantic_stream)
            made = {"stream": vocab.semantic_stream, "type": "semantic",
                    **unit_stream(card, self.dedup, vocab.k, vocab.frame_rate)}
            vocab.bpe.check_source(made, f"the LM's data (dedup: {str(self.dedup).lower()})")

    def check_shards(self, shards: str) -> None:
        """With Acoustic BPE: refuse shards whose stream is not the one the BPE was trained on."""
        codec = self.speech_kind == "codec"
        bpe = self.vocab.codec_bpe if codec else self.vocab.bpe
        if bpe is None:
            return
        from speechtok.shards import read_manifest
        from speechtok.tokenizers.unit_bpe import stream_source

        path, manifest = read_manifest(shards)
        name = self.vocab.codec_stream if codec else self.vocab.semantic_stream
        if name not in manifest["tokenizers"]:
            raise ValueError(f"{path}: no stream '{name}', which the LM's {'codec ' if codec else ''}BPE "
                             f"({bpe.path}) reads (streams: {', '.join(manifest['tokenizers'])})")
        card = manifest["tokenizers"][name]
        made = {"stream": name, "type": card.get("type")}
        if card["type"] == ("codec" if codec else "semantic"):
            made = stream_source(name, card, self.dedup, self.vocab.n_q if codec else None)
        bpe.check_source(made, f"{path}'s stream '{name}'")

    def frames(self, sample: dict) -> np.ndarray:
        """Frame-level units of a sample, expanding run-length shards ([n_q, F] codes for codec speech)."""
        if self.speech_kind == "codec":
            return sample[self.vocab.codec_stream][: self.vocab.n_q]
        units = sample[self.vocab.semantic_stream]
        durations = sample.get(self.vocab.semantic_stream + "_durations")
        return np.repeat(units, durations) if durations is not None else units

    def unit_ids(self, frames: np.ndarray) -> list[int]:
        units = run_length(frames)[0] if self.dedup else frames
        return self.vocab.units_to_ids(units).tolist()

    def speech_ids(self, sample: dict, f0: int = 0, f1: int | None = None) -> list[int]:
        """The speech tokens of frames [f0, f1): units, with pitch and style merged by time if expressive, or
        codec frames."""
        frames = self.frames(sample)
        f1 = frames.shape[-1] if f1 is None else f1
        if self.speech_kind == "codec":
            return self.vocab.codec_sequence(frames[:, f0:f1]).tolist()
        if not self.vocab.expressive:
            return self.unit_ids(frames[f0:f1])
        return expressive_ids(self.vocab, sample, frames, f0, f1, self.dedup)

    def text_ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def word_ids(self, words: list[str]) -> list[list[int]]:
        """Each word's token ids as the LM sees them in running text: the transcript " ".join(words)
        tokenized once, its tokens split at word ends by their character offsets. A span tokenized on its
        own would need a leading space for byte-level BPE (GPT-2's "Ġword") but would get a stray "▁"
        token from SentencePiece (Llama-2), which marks word starts itself. Tokenizers without offsets
        (Python ones) get each word with the space before it."""
        try:
            enc = self.tok(" ".join(words), add_special_tokens=False, return_offsets_mapping=True)
        except NotImplementedError:
            enc = {}
        if "offset_mapping" not in enc:
            return [self.text_ids(w if i == 0 else " " + w) for i, w in enumerate(words)]
        ends = np.cumsum([len(w) + 1 for w in words]) - 1  # where each word ends in the transcript
        out: list[list[int]] = [[] for _ in words]
        for token, (_, end) in zip(enc["input_ids"], enc["offset_mapping"]):
            out[min(int(np.searchsorted(ends, end)), len(words) - 1)].append(token)
        return out

    def speech(self, sample: dict) -> list[int]:
        return self.bos + [self.vocab.speech_id] + self.speech_ids(sample) + self.eos

    def text(self, line: str) -> list[int]:
        return self.bos + [self.vocab.text_id] + self.text_ids(line) + self.eos

    def asr(self, sample: dict) -> list[int]:
        return (self.bos + [self.vocab.speech_id] + self.speech_ids(sample) + [self.vocab.text_id]
                + self.text_ids(sample["text"]) + self.eos)

    def tts(self, sample: dict) -> list[int]:
        return (self.bos + [self.vocab.text_id] + self.text_ids(sample["text"]) + [self.vocab.speech_id]
                + self.speech_ids(sample) + self.eos)

    def spans(self, sample: dict, rng: np.random.Generator) -> list[Span]:
        """Random word spans of alternating modality, starting with a random one."""
        words, n = sample["words"], self.frames(sample).shape[-1]
        rate = self.rate
        lo, hi = self.span_words
        modality = "text" if rng.random() < 0.5 else "speech"
        out, i = [], 0
        while i < len(words):
            j = min(len(words), i + int(rng.integers(lo, hi + 1)))
            f0 = 0 if i == 0 else min(n, int(round(words[i]["start"] * rate)))
            f1 = n if j == len(words) else min(n, int(round(words[j]["start"] * rate)))
            out.append(Span(modality, i, j, f0, max(f0, f1)))
            modality = "speech" if modality == "text" else "text"
            i = j
        return out

    def interleaved(self, sample: dict, rng: np.random.Generator) -> tuple[list[int], list[Span]]:
        ids = list(self.bos)
        spans = self.spans(sample, rng)
        words = self.word_ids([w["word"] for w in sample["words"]])
        for s in spans:
            if s.modality == "text":
                ids += [self.vocab.text_id] + [t for w in words[s.first: s.last] for t in w]
            else:
                ids += [self.vocab.speech_id] + self.speech_ids(sample, s.f0, s.f1)
        return ids + self.eos, spans

    def build(self, fmt: str, sample: dict, rng: np.random.Generator) -> list[int]:
        """A sequence of format `fmt` from a speech sample (`text`: its transcript), falling back to
        speech-only when the sample lacks the words or text the format needs."""
        if fmt == "text" and sample.get("text"):
            return self.text(sample["text"])
        if fmt == "interleaved" and sample.get("words"):
            return self.interleaved(sample, rng)[0]
        if fmt in ("asr", "tts") and sample.get("text"):
            return self.asr(sample) if fmt == "asr" else self.tts(sample)
        return self.speech(sample)
