"""Stage 1 of AudioLM-style generation: sample semantic units from a `tok lm` model.

Prompts are a speech prompt (its units), a text prompt (`[TEXT] text [SPEECH]`), or nothing
(`[SPEECH]`). Sampling runs on the decoding core (lm/decoding.py): the Hugging Face model with a static
cache and fixed shapes (batches left-padded), every logit outside the semantic range and EOS masked (EOS
also before `min_new_tokens`), so the output is units."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from speechtok.lm.decoding import Decoder, Plan, Sampler, bucket
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
    compile: bool = False  # the decoding step compiled whole (CUDA graphs on a GPU): slow start, fast steps


def semantic_classes(vocab: SpeechVocab, eos_id: int, size: int) -> torch.Tensor:
    """[2, size] allowed tokens: the semantic units (and an expressive LM's pitch and style tokens) before
    `min_new_tokens`, then those and EOS."""
    allowed = torch.zeros(2, size, dtype=torch.bool)
    # BPE: merges too
    allowed[:, vocab.semantic_first_id: vocab.semantic_first_id + vocab.semantic_tokens] = True
    allowed[:, torch.from_numpy(expressive_mask(vocab, size))] = True  # an expressive LM: pitch, style
    allowed[1, eos_id] = True
    return allowed


class HFSteps(nn.Module):
    """A Hugging Face causal LM as a `StepModel`: its own `StaticCache` of `length` positions, the first
    `width` holding the left-padded prompts (row b's padding: `pad[b]`); a 4-D mask over the whole cache,
    so every step has the same shapes. Full-attention (Llama-style) models: a sliding window would need
    its own mask."""

    def __init__(self, model, pad: torch.Tensor, width: int, length: int):
        super().__init__()
        from transformers import StaticCache

        self.model, self.width = model, width
        self.cache = StaticCache(config=model.config, max_cache_len=length)
        index = torch.arange(length, device=pad.device)
        self.register_buffer("valid", index[None] >= pad[:, None], persistent=False)  # [B, L]
        self.register_buffer("start", width - pad, persistent=False)  # row b's first generated position
        self.register_buffer("index", index, persistent=False)
        # the cache index of step 0, as a tensor: prompts of other widths reuse the compiled step
        self.register_buffer("step_zero", torch.tensor(width, device=pad.device), persistent=False)
        impl = model.config._attn_implementation
        if impl not in ("sdpa", "eager"):  # the others take no 4-D mask
            raise ValueError(f"generation needs sdpa or eager attention, the LM is loaded with {impl}")
        self.sdpa = impl == "sdpa"
        for t in self.buffers():
            torch._dynamo.mark_static_address(t)

    def _mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Boolean (True: attend) for SDPA, additive for the other attention implementations."""
        if self.sdpa:
            return mask
        dtype = self.model.dtype
        zeros = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return zeros.masked_fill(~mask, torch.finfo(dtype).min)

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Prompts [B, width] into the cache → the logits [B, 1, V] of the first step."""
        at = self.index[: self.width]
        mask = (self.valid[:, None, :] & (self.index[None, :] <= at[:, None]))[:, None]  # [B, 1, W, L]
        mask = mask | (self.index[None, :] == at[:, None])  # padded queries see themselves: no empty row
        positions = (at[None] - (self.width - self.start)[:, None]).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=self._mask(mask), position_ids=positions,
                         cache=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits.float()

    def step(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mask = (self.valid & (self.index[None] <= self.step_zero + t))[:, None, None]  # [B, 1, 1, L]
        out = self.model(input_ids=tokens, attention_mask=self._mask(mask),
                         position_ids=(self.start + t)[:, None], cache=self.cache, use_cache=True)
        return out.logits.float()


def speech_prompt(tokenizer, vocab: SpeechVocab, units: np.ndarray | None = None,
                  text: str | None = None) -> list[int]:
    """Token ids that ask the LM to go on in speech: after `units`, after `text`, or from nothing."""
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    if text is not None:
        ids += [vocab.text_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
    ids.append(vocab.speech_id)
    if units is not None:
        ids += vocab.units_to_ids(units).tolist()
    return ids


def unit_decoder(model, tokenizer, vocab: SpeechVocab, prompts: list[list[int]], opts: SamplingOptions,
                 seeds: list[int] | None = None) -> Decoder:
    """The decoding core set up for `prompts` (left-padded, prefilled into a static cache)."""
    device = next(model.parameters()).device
    B, N, width = len(prompts), opts.max_new_tokens, max(map(len, prompts))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding: every prompt ends where generation starts
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
    pad = torch.tensor([width - len(p) for p in prompts], device=device)
    steps = HFSteps(model, pad, width, bucket(width + N))
    first = steps.prefill(ids.to(device))
    size = first.shape[-1]
    klass = (torch.arange(N) >= opts.min_new_tokens).long()[None, :, None].expand(B, N, 1)
    plan = Plan(classes=semantic_classes(vocab, tokenizer.eos_token_id, size), klass=klass.contiguous(),
                known=torch.full((B, N, 1), -1, dtype=torch.long),
                seeds=torch.tensor(seeds or [opts.seed] * B, dtype=torch.long),
                stop_token=tokenizer.eos_token_id)
    return Decoder(steps, plan, first, Sampler(opts.temperature, opts.top_k, opts.top_p))


@torch.no_grad()
def generate_ids(model, tokenizer, vocab: SpeechVocab, prompts: list[list[int]],
                 opts: SamplingOptions | None = None, seeds: list[int] | None = None,
                 progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """LM ids generated after each prompt (EOS and what follows it dropped), one array per prompt. Row i
    draws with seed `seeds[i]` (default: `opts.seed`), the same ids alone as in any batch. Decoding
    stops early, checked every 64 steps, once every row has ended."""
    opts = opts or SamplingOptions()
    decoder = unit_decoder(model, tokenizer, vocab, prompts, opts, seeds)

    def on_chunk(done: int) -> bool:
        if progress is not None:
            progress(done)
        return decoder.all_finished()

    out = decoder.run(opts.compile, on_chunk=on_chunk)[..., 0].numpy()
    result = []
    for row in out:
        end = np.flatnonzero(row == tokenizer.eos_token_id)
        result.append(row[: end[0]] if len(end) else row)
    return result


def generated_streams(vocab: SpeechVocab, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Generated ids → {"units"} (BPE merges undone), with an expressive LM's "pitch" and "style" too."""
    return split_generated(vocab, ids) if vocab.expressive else {"units": vocab.ids_to_units(ids)}


def generate_units(model, tokenizer, vocab: SpeechVocab, prompts: list[list[int]],
                   opts: SamplingOptions | None = None, seeds: list[int] | None = None,
                   progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """The units of `generate_ids` (an expressive LM's pitch and style split off)."""
    return [generated_streams(vocab, row)["units"]
            for row in generate_ids(model, tokenizer, vocab, prompts, opts, seeds, progress)]
