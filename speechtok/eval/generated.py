"""Metrics of generated continuations (GSLM, Lakhotia et al. 2021): auto-BLEU (n-grams of a sequence that
recur elsewhere in the same sequence), unit diversity, and GenPPL (perplexity of the continuation's ASR
transcript under a text LM)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from speechtok.eval.models import model_entry


def ngrams(seq, n: int) -> list[tuple]:
    seq = list(seq)
    return [tuple(seq[i: i + n]) for i in range(len(seq) - n + 1)]


def auto_bleu(seq, n: int = 2) -> float | None:
    """GSLM's auto-BLEU-n: the fraction of the sequence's n-grams found among the n-grams of the rest of
    the sequence (its left part before and right part after that n-gram's span); None when it has none."""
    seq = list(seq)
    grams = ngrams(seq, n)
    if not grams:
        return None
    counts = Counter(grams)
    hits = 0
    for p, g in enumerate(grams):
        overlapping = Counter(grams[max(0, p - n + 1): p + n])  # n-grams sharing a token with position p
        hits += counts[g] - overlapping[g] > 0
    return hits / len(grams)


def distinct(seq, n: int = 1) -> float | None:
    """Distinct-n: unique n-grams / n-grams (1: no repetition)."""
    grams = ngrams(seq, n)
    return len(set(grams)) / len(grams) if grams else None


def entropy_bits(seq) -> float | None:
    """Entropy of the sequence's unigram distribution, in bits."""
    seq = list(seq)
    if not seq:
        return None
    p = np.array(list(Counter(seq).values()), dtype=np.float64) / len(seq)
    return float(-(p * np.log2(p)).sum())


class TextLM:
    """A transformers causal text LM (hub id or local dir) that scores transcripts."""

    def __init__(self, name_or_path: str, device: str = "cpu", batch_size: int = 8):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from speechtok.eval.models import hf_weights_sha256

        self.backend = "transformers"
        self.model = str(name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.net = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32).to(device).eval()
        self.device, self.batch_size = device, batch_size
        self.model_sha256 = hf_weights_sha256(name_or_path)

    def perplexity(self, texts: list[str]) -> dict:
        """exp(summed NLL / predicted tokens) over all texts; each text is scored after the tokenizer's BOS
        (or EOS) token, so its first word counts too."""
        import torch

        tok = self.tokenizer
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        seqs = [([start] if start is not None else []) + tok(t, add_special_tokens=False)["input_ids"]
                for t in texts if t.strip()]
        seqs = [s for s in seqs if len(s) > 1]
        nll, count = 0.0, 0
        for i in range(0, len(seqs), self.batch_size):
            batch = seqs[i: i + self.batch_size]
            width = max(map(len, batch))
            ids = torch.tensor([s + [0] * (width - len(s)) for s in batch], device=self.device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=self.device)
            with torch.inference_mode():
                logp = self.net(input_ids=ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
            tgt = logp.gather(-1, ids[:, 1:, None])[..., 0]
            nll -= float((tgt * mask[:, 1:]).sum())
            count += int(mask[:, 1:].sum())
        return {"texts": len(seqs), "tokens": count, "perplexity": math.exp(nll / count) if count else None,
                **model_entry(self)}
