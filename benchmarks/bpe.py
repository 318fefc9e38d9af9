"""Acoustic BPE: speechtok's `train_bpe` against `codec-bpe` (the reference implementation, PyPI) on the
same codes, the same number of merges: tokens after BPE (sequence-length reduction) and training time.

    python benchmarks/bpe.py                       # units (k=500) and codec frames (4 × 1024)

Codes are synthetic but structured like real ones: each stream is a Markov chain with sparse transitions
(Dirichlet 0.05 rows), so frequent n-grams exist for BPE to merge. Codec codebooks are independent chains."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import hardware, write_section  # noqa: E402

from speechtok.tokenizers.unit_bpe import train_bpe  # noqa: E402


def chains(k: int, n: int, length: int, n_q: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    trans = [rng.dirichlet(np.full(k, 0.05), size=k).cumsum(1) for _ in range(n_q)]
    out = []
    for _ in range(n):
        rows = np.zeros((n_q, length), dtype=np.int64)
        rows[:, 0] = rng.integers(k, size=n_q)
        u = rng.random((n_q, length))
        for t in range(1, length):
            for q in range(n_q):
                rows[q, t] = min(int(np.searchsorted(trans[q][rows[q, t - 1]], u[q, t])), k - 1)
        out.append(rows[0] if n_q == 1 else rows)
    return out


def compare(name: str, streams: list[np.ndarray], k: int, n_q: int, merges: int) -> str:
    from codec_bpe import codes_to_chars
    from codec_bpe.core.trainer import Trainer

    t0 = time.perf_counter()
    ours = train_bpe(streams, k, k * n_q + merges, n_q)
    ours_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        for i, s in enumerate(streams):
            np.save(Path(d) / f"codes_{i:05d}.npy", s if n_q > 1 else s[None])
        t0 = time.perf_counter()
        ref = Trainer(num_codebooks=n_q, codebook_size=k, vocab_size=k * n_q + 1 + merges,
                      eos_token="</s>").train(d)
        ref_s = time.perf_counter() - t0
    codes = sum(s.size for s in streams)
    a = sum(len(ours.encode(s)) for s in streams)
    b = sum(len(ref.encode(codes_to_chars(s if n_q > 1 else s[None], k), add_special_tokens=False))
            for s in streams)
    exact = all(np.array_equal(ours.decode(ours.encode(s)), s) for s in streams)
    return (f"| {name} | {codes:,} | {merges} | {a:,} ({codes / a:.3f}×), {ours_s:.1f} s | "
            f"{b:,} ({codes / b:.3f}×), {ref_s:.1f} s | {a / b - 1:+.2%} | {'yes' if exact else 'NO'} |")


def main() -> None:
    rows = [compare("units k=500", chains(500, 200, 500, 1), 500, 1, 4000),
            compare("codec 4 × 1024", chains(1024, 100, 250, 4, seed=1), 1024, 4, 8000)]
    body = ("## Acoustic BPE vs codec-bpe (issue #27)\n\n"
            f"Hardware: {hardware(torch.device('cpu'))}. `python benchmarks/bpe.py`: Markov-chain codes "
            "(sparse transitions), the same codes and number of merges for both; codec-bpe 1.4.1 `Trainer` "
            "(one extra special token in its vocabulary).\n\n"
            "| codes | codes in | merges | speechtok tokens (reduction), train time | codec-bpe tokens "
            "(reduction), train time | token count vs codec-bpe | exact round trip "
            "|\n|---|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")
    print(body)
    write_section("bpe", body)


if __name__ == "__main__":
    main()
