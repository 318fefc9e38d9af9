"""Overfit checks for acoustic models: random codes (chance 1/codebook_size a code) that a tiny model can
only reproduce after a voice prompt if it memorised the utterance, fed as `tok acoustic train` feeds them."""

from __future__ import annotations

import numpy as np
import torch

from speechtok.lm.acoustic_train import pair


def random_utterances(cfg, n: int, frames: int, seed: int = 0) -> list[dict]:
    """`n` samples of `frames` random units and codes: one unit per codec frame (as semantic_rate =
    codec_rate in the model's config), so that the units name the utterance but not its codes."""
    rng = np.random.default_rng(seed)
    return [{cfg.semantic_stream: rng.integers(0, cfg.k, frames),
             cfg.codec_stream: rng.integers(0, cfg.codebook_size, (cfg.n_q, frames))} for _ in range(n)]


def reproduction(model, samples: list[dict], prompt: int) -> np.ndarray:
    """Per codebook, the fraction of each sample's codes after a `prompt`-frame voice prompt that greedy
    generation reproduces (the prompt itself must come back unchanged)."""
    model.eval()
    got = []
    for s in samples:
        codes = s[model.cfg.codec_stream]
        out = model.generate(s[model.cfg.semantic_stream], codes.shape[1], prompt_codes=codes[:, :prompt],
                             temperature=0)
        np.testing.assert_array_equal(out[:, :prompt], codes[:, :prompt])
        got.append((out[:, prompt:] == codes[:, prompt:]).mean(1))
    model.train()
    return np.mean(got, 0)


def overfit(model, samples: list[dict], steps: int, lr: float = 3e-3) -> None:
    """`steps` AdamW steps on the whole of every sample, as `pair` turns a shard sample into model input."""
    rng = np.random.default_rng(0)
    items = [pair(s, model.cfg, s[model.cfg.codec_stream].shape[1], rng) for s in samples]
    units, steps_in = [torch.as_tensor(u) for u, _ in items], [torch.as_tensor(x) for _, x in items]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only waits (10× slower on a busy CPU)
    try:
        for _ in range(steps):
            model(units, steps_in).backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
