"""Stage 1 of AudioLM-style generation: sample semantic units from a `tok lm` model.

Prompts are a speech prompt (its units), a text prompt (`[TEXT] text [SPEECH]`), or nothing
(`[SPEECH]`). Sampling runs through Hugging Face `generate` (KV cache, temperature / top-k / top-p,
batches left-padded) with every logit outside the semantic range and EOS masked, so the output is units."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from speechtok.lm.vocab import SpeechVocab
from speechtok.prosody.expressive import expressive_mask, split_generated


@dataclass
class SamplingOptions:
    max_new_tokens: int = 500
    min_new_tokens: int = 0  # EOS is masked until this many units
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    compile: bool = False  # static KV cache + torch.compile'd forward: slow first call, fast decoding after


class OnlySemantic:
    """A logits processor that leaves only the semantic units and EOS to choose from."""

    def __init__(self, vocab: SpeechVocab, eos_id: int, size: int):
        self.allowed = torch.zeros(size, dtype=torch.bool)
        self.allowed[vocab.semantic_first_id: vocab.semantic_first_id + vocab.semantic_tokens] = True
        self.allowed[eos_id] = True
        self.allowed[torch.from_numpy(expressive_mask(vocab, size))] = True  # an expressive LM: pitch, style

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        allowed = self.allowed[: scores.shape[-1]].to(scores.device)
        return scores.masked_fill(~allowed, float("-inf"))


def speech_prompt(tokenizer, vocab: SpeechVocab, units: np.ndarray | None = None, text: str | None = None) -> list[int]:
    """Token ids that ask the LM to go on in speech: after `units`, after `text`, or from nothing."""
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    if text is not None:
        ids += [vocab.text_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
    ids.append(vocab.speech_id)
    if units is not None:
        ids += vocab.units_to_ids(units).tolist()
    return ids


@torch.no_grad()
def generate_units(model, tokenizer, vocab: SpeechVocab, prompts: list[list[int]],
                   opts: SamplingOptions | None = None) -> list[np.ndarray]:
    """Units generated after each prompt (EOS and what follows it dropped), one array per prompt."""
    opts = opts or SamplingOptions()
    device = next(model.parameters()).device
    width = max(map(len, prompts))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding: every prompt ends where generation starts
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    if opts.compile and not getattr(model, "_speechtok_compiled", False):
        model.forward = torch.compile(model.forward)
        model._speechtok_compiled = True
    torch.manual_seed(opts.seed)
    greedy = opts.temperature <= 0
    out = model.generate(
        input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=opts.max_new_tokens,
        min_new_tokens=opts.min_new_tokens or None,
        do_sample=not greedy, temperature=None if greedy else opts.temperature, top_k=None if greedy else opts.top_k,
        top_p=None if greedy else opts.top_p, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad,
        logits_processor=[OnlySemantic(vocab, tokenizer.eos_token_id, model.get_output_embeddings().weight.shape[0])],
        use_cache=True, cache_implementation="static" if opts.compile else None)
    result = []
    for row in out[:, width:].cpu().numpy():
        end = np.flatnonzero(row == tokenizer.eos_token_id)
        row = row[: end[0]] if len(end) else row
        result.append(split_generated(vocab, row)["units"])  # an expressive LM's pitch and style are dropped
    return result
