"""ABX distance throughput: the batched anti-diagonal DTW that `tok eval tokens` uses against one `dtw`
call per pair (the straightforward loop), on random triphone-length code sequences; also checks that
both give the same distances.

    python benchmarks/eval_abx.py --pairs 4000"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import hardware, write_section  # noqa: E402

from speechtok.eval.abx import item_distances  # noqa: E402
from speechtok.eval.dtw import dtw  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=4000)
    ap.add_argument("--n-q", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    # triphones at 50 Hz last ~0.2–0.4 s: 10–20 frames; at 100 Hz twice that
    codes = [rng.integers(0, 500, (args.n_q, rng.integers(10, 40))) for _ in range(2 * args.pairs)]
    pairs = [(i, i + args.pairs) for i in range(args.pairs)]
    t = time.perf_counter()
    loop = [dtw((codes[i][:, :, None] != codes[j][:, None, :]).mean(0))[0] for i, j in pairs]
    t_loop = time.perf_counter() - t
    t = time.perf_counter()
    batched = item_distances(codes, pairs)
    t_batch = time.perf_counter() - t
    np.testing.assert_allclose([batched[p] for p in pairs], loop)
    body = (f"## ABX distances (issue #8)\n\nHardware: {hardware(torch.device('cpu'))}. {args.pairs:,} pairs "
            f"of 10–40-frame sequences, {args.n_q} codebook(s).\n\n"
            "| one `dtw` per pair | batched (`item_distances`) | speed-up |\n|---|---|---|\n"
            f"| {args.pairs / t_loop:,.0f} pairs/s | {args.pairs / t_batch:,.0f} pairs/s | "
            f"{t_loop / t_batch:.1f}× |\n\nSame distances (checked). At this rate 10⁶ distances take "
            f"{1e6 * t_batch / args.pairs / 60:.1f} min.")
    print(body)
    if not args.no_write:
        write_section("eval-abx-cpu", body)


if __name__ == "__main__":
    main()
