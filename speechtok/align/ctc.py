"""CTC forced alignment with a transformers CTC model (wav2vec2, HuBERT, MMS...: hub id or local directory
with its Wav2Vec2CTCTokenizer): emissions in fixed windows (long audio in chunks with context), the
transcript mapped onto the model's character vocabulary, and a batched Viterbi (`viterbi.py`)."""

from __future__ import annotations

import math

import numpy as np
import torch

from speechtok.align import Alignment
from speechtok.align.text import spoken_tokens, strip_accents
from speechtok.align.viterbi import ctc_viterbi, label_spans
from speechtok.corpus import Word


class CharVocab:
    """The model's output symbols and how transcript tokens map onto them (case, accents, delimiter)."""

    def __init__(self, vocab: dict[str, int], blank: int, delimiter: str | None):
        self.ids, self.blank = vocab, blank
        letters = [s for s in vocab if len(s) == 1 and s.isalpha()]
        self.upper = sum(s.isupper() for s in letters) > sum(s.islower() for s in letters)
        self.spell_numbers = not any(s.isdigit() for s in vocab)
        self.delimiter = vocab.get(delimiter) if delimiter else None

    def chars(self, token: str) -> list[int]:
        """The ids of a token's characters; a character the vocabulary lacks is tried without its accent,
        then dropped."""
        token = token.upper() if self.upper else token
        out = []
        for c in token:
            if c not in self.ids:
                c = strip_accents(c)
            out += [self.ids[x] for x in c if x in self.ids]
        return out

    def encode(self, words: list[str]) -> tuple[list[int], list[int], list[str]]:
        """(label ids, the word index of each label or -1 for a delimiter, unplaced words)."""
        labels, owner, unplaced = [], [], []
        for i, word in enumerate(words):
            ids = []
            for t in spoken_tokens(word, self.spell_numbers):
                if ids and self.delimiter is not None:
                    ids.append(self.delimiter)
                ids += self.chars(t)
            if not ids:
                unplaced.append(word)
                continue
            if labels and self.delimiter is not None:
                labels.append(self.delimiter)
                owner.append(-1)
            labels += ids
            owner += [i] * len(ids)
        return labels, owner, unplaced


class CtcAligner:
    """Aligns transcripts with a CTC model; `chunk_seconds` bounds the audio one forward pass sees."""

    name = "ctc"

    def __init__(self, model_ref: str, device: str = "cpu", chunk_seconds: float = 30.0,
                 context_seconds: float = 2.0, max_batch_seconds: float = 120.0):
        from transformers import AutoModelForCTC, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor

        self.device = torch.device(device)
        self.model = AutoModelForCTC.from_pretrained(model_ref).eval().to(self.device)
        tok = Wav2Vec2CTCTokenizer.from_pretrained(model_ref)
        try:
            fe = Wav2Vec2FeatureExtractor.from_pretrained(model_ref)
            self.sample_rate, self.normalize = int(fe.sampling_rate), bool(fe.do_normalize)
            self.use_mask = bool(fe.return_attention_mask)
        except OSError:  # no preprocessor_config.json: the wav2vec2 defaults
            self.sample_rate, self.normalize, self.use_mask = 16000, True, False
        blank = self.model.config.pad_token_id
        blank = tok.pad_token_id if blank is None else blank
        self.vocab = CharVocab(tok.get_vocab(), int(blank), tok.word_delimiter_token)
        self.name = f"ctc:{model_ref}"
        self.hop = math.prod(self.model.config.conv_stride)
        self.chunk = int(chunk_seconds * self.sample_rate) // self.hop * self.hop
        self.context = int(context_seconds * self.sample_rate) // self.hop * self.hop
        self.max_batch_samples = int(max_batch_seconds * self.sample_rate)

    def num_frames(self, n: int) -> int:
        return int(self.model._get_feat_extract_output_lengths(torch.tensor(n)))

    @torch.inference_mode()
    def _forward(self, windows: list[np.ndarray]) -> list[torch.Tensor]:
        """Log-probabilities [frames, V] of each window; windows of equal length (or any, with a model that
        takes an attention mask) share a forward pass."""
        out: list[torch.Tensor | None] = [None] * len(windows)
        order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
        groups, cur = [], []
        for i in order:
            fits = cur and (self.use_mask or len(windows[i]) == len(windows[cur[0]]))
            if cur and (not fits or len(windows[i]) * (len(cur) + 1) > self.max_batch_samples):
                groups.append(cur)
                cur = []
            cur.append(i)
        groups += [cur] if cur else []
        for g in groups:
            n = max(len(windows[i]) for i in g)
            x = torch.zeros(len(g), n)
            mask = torch.zeros(len(g), n, dtype=torch.long)
            for j, i in enumerate(g):
                x[j, : len(windows[i])] = torch.from_numpy(windows[i])
                mask[j, : len(windows[i])] = 1
            kw = {"attention_mask": mask.to(self.device)} if self.use_mask else {}
            logits = self.model(x.to(self.device), **kw).logits.float().log_softmax(-1)
            for j, i in enumerate(g):
                out[i] = logits[j, : self.num_frames(len(windows[i]))]
        return out

    def emissions(self, wavs: list[np.ndarray]) -> list[torch.Tensor]:
        """Log-probabilities [frames, V] per utterance; audio longer than a chunk runs in chunks with
        `context` samples on each side, keeping each chunk's centre frames."""
        windows, parts = [], []  # parts[u] = [(window index, first kept frame, kept frames)]
        for wav in wavs:
            if self.normalize:
                wav = (wav - wav.mean()) / np.sqrt(wav.var() + 1e-7)
            wav = wav.astype(np.float32)
            if len(wav) <= self.chunk + 2 * self.context:
                parts.append([(len(windows), 0, None)])
                windows.append(wav)
                continue
            mine = []
            for start in range(0, len(wav), self.chunk):
                a = max(0, start - self.context)
                windows.append(wav[a: start + self.chunk + self.context])
                mine.append((len(windows) - 1, (start - a) // self.hop, self.chunk // self.hop))
            parts.append(mine)
        logits = self._forward(windows)
        out = []
        for wav, mine in zip(wavs, parts):
            pieces = [logits[w][f0: None if n is None else f0 + n] for w, f0, n in mine]
            e = torch.cat(pieces)[: self.num_frames(len(wav))]
            out.append(e)
        return out

    def align(self, batch: list[tuple[np.ndarray, str]], phones: bool = True) -> list[Alignment]:
        encoded = [self.vocab.encode(text.split()) for _, text in batch]
        results: list[Alignment | None] = [None] * len(batch)
        todo = [i for i, (labels, _, unplaced) in enumerate(encoded) if labels]
        for i, (labels, _, unplaced) in enumerate(encoded):
            if not labels:
                results[i] = Alignment(unplaced=unplaced,
                                       error="no transcript word maps onto the model's vocabulary")
        if todo:
            ems = self.emissions([batch[i][0] for i in todo])
            T = max(len(e) for e in ems)
            L = max(len(encoded[i][0]) for i in todo)
            lp = torch.full((len(todo), T, ems[0].shape[1]), float("-inf"), device=ems[0].device)
            targets = torch.zeros(len(todo), L, dtype=torch.long)
            for j, (i, e) in enumerate(zip(todo, ems)):
                lp[j, : len(e)] = e
                targets[j, : len(encoded[i][0])] = torch.tensor(encoded[i][0])
            paths = ctc_viterbi(lp, torch.tensor([len(e) for e in ems]), targets.to(lp.device),
                                torch.tensor([len(encoded[i][0]) for i in todo]), self.vocab.blank)
            sec = self.hop / self.sample_rate
            for i, path in zip(todo, paths):
                labels, owner, unplaced = encoded[i]
                if path is None:
                    results[i] = Alignment(unplaced=unplaced, error=f"audio too short for the transcript "
                                                                    f"({len(labels)} labels)")
                    continue
                spans: dict[int, list[int]] = {}
                for (a, b), w in zip(label_spans(path, len(labels)), owner):
                    if w >= 0:
                        spans.setdefault(w, [a, b])[1] = b
                words = batch[i][1].split()
                results[i] = Alignment([Word(words[w], round(a * sec, 3), round(b * sec, 3))
                                        for w, (a, b) in sorted(spans.items())], None, unplaced)
        return results
