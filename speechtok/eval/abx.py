"""ABX phone discriminability of discrete tokens over triphones (ZeroSpeech 2021 / Libri-light "within
context"): A and X are the same triphone, B differs in its central phone only; the error is the share of
(A, B, X) triples where X is closer to B (ties count half). Within speaker, A, B and X share a speaker;
across speaker, A and B share one and X comes from another. Tokens are compared one-hot (frame distance =
share of codebooks that differ), the item distance is the DTW path average.

Averaging follows Libri-light's eval_ABX.py (and zerospeech-libriabx2): within speaker, over contexts,
then speakers, then phone pairs; across speaker, over all (context, X speaker) cells of an A speaker
pooled together, then A speakers, then phone pairs. Item frames, DTW orientation (X along the rows, or the
earlier item for two A items) and tie-breaking are also the reference's, so scores on the same items and
codes are equal (tests/fixtures/abx_reference.npz)."""

from __future__ import annotations

import math
from collections import defaultdict
from itertools import product

import numpy as np

from speechtok.eval.alignments import AbxItem
from speechtok.eval.dtw import dtw_batch


def item_frames(onset: float, offset: float, frame_rate: float) -> tuple[int, int]:
    """Frames [start, end) of an item, as Libri-light's ABX loader cuts them (end may be <= start)."""
    return max(0, math.ceil(frame_rate * onset - 0.5)), math.floor(frame_rate * offset - 0.5)


def item_distances(codes: list[np.ndarray], pairs: list[tuple[int, int]], chunk: int = 2048) -> dict:
    """DTW distances of many (i, j) pairs of [n_q, F] code sequences (i along the rows), the frame cost
    being the share of codebooks that differ; batched by similar lengths: {(i, j): distance}."""
    pairs = sorted(pairs, key=lambda p: (codes[p[0]].shape[1], codes[p[1]].shape[1]))
    out = {}
    for c in range(0, len(pairs), chunk):
        part = pairs[c: c + chunk]
        n = np.array([codes[i].shape[1] for i, _ in part])
        m = np.array([codes[j].shape[1] for _, j in part])
        q = codes[part[0][0]].shape[0]
        x = np.full((len(part), q, n.max()), -1)
        y = np.full((len(part), q, m.max()), -2)
        for r, (i, j) in enumerate(part):
            x[r, :, : n[r]], y[r, :, : m[r]] = codes[i], codes[j]
        cost = (x[:, :, :, None] != y[:, :, None, :]).mean(axis=1)
        out.update(zip(part, dtw_batch(cost, n, m).tolist()))
    return out


def _mean(values) -> float:
    values = [v for v in values if v == v]
    return float(np.mean(values)) if values else float("nan")


def abx_error(items: list[AbxItem], codes: list[np.ndarray | None], max_per_group: int = 5,
              seed: int = 0) -> dict:
    """Within- and across-speaker ABX error of items with their [n_q, F] codes (None: item not covered).
    `max_per_group` items per (context, phone, speaker) keep the number of triples bounded."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, (item, c) in enumerate(zip(items, codes)):
        if c is not None and c.shape[-1] > 0:
            groups[((item.prev, item.next), item.phone, item.speaker)].append(i)
    for key, idx in groups.items():
        if len(idx) > max_per_group:
            groups[key] = sorted(rng.choice(idx, max_per_group, replace=False).tolist())
    by_context: dict[tuple, dict] = defaultdict(dict)  # context → phone → speaker → items
    for (ctx, phone, spk), idx in groups.items():
        by_context[ctx].setdefault(phone, {})[spk] = idx
    cells = []  # (mode, (a, b), A speaker, cell within it, A items, B items, X items)
    for ctx, phones in by_context.items():
        for a, b in product(phones, phones):
            if a == b:
                continue
            for s, a_set in phones[a].items():
                b_set = phones[b].get(s)
                if not b_set:
                    continue
                cells.append(("within", (a, b), s, ctx, a_set, b_set, a_set))
                cells += [("across", (a, b), s, (ctx, s2), a_set, b_set, x_set)
                          for s2, x_set in phones[a].items() if s2 != s]

    def pair(x: int, other: int, same_group: bool) -> tuple[int, int]:
        """Which DTW the reference runs: X along the rows, or, for two items of one A group (within
        speaker), the earlier one in the item list (the reference's feature manifest order)."""
        return (min(x, other), max(x, other)) if same_group else (x, other)

    needed = set()
    for mode, _, _, _, A, B, X in cells:
        for x in X:
            needed.update(pair(x, a, mode == "within") for a in A if a != x)
            needed.update(pair(x, b, False) for b in B)
    dist = item_distances(codes, list(needed))
    # mode → (a, b) → A speaker → cell (context, or (context, X speaker)) → score
    scores = {m: defaultdict(lambda: defaultdict(dict)) for m in ("within", "across")}
    for mode, ab, spk, cell, A, B, X in cells:
        total, n = 0.0, 0
        for a, b, x in product(A, B, X):
            if a != x:
                dax, dbx = dist[pair(x, a, mode == "within")], dist[pair(x, b, False)]
                total += 1.0 if dax < dbx else 0.5 if dax == dbx else 0.0
                n += 1
        if n:
            scores[mode][ab][spk][cell] = total / n
    out = {}
    for mode, table in scores.items():
        per_pair = [_mean(_mean(by_cell.values()) for by_cell in spk.values()) for spk in table.values()]
        acc = _mean(per_pair)
        out[f"{mode}_speaker_error"] = None if acc != acc else 1.0 - acc
        out[f"{mode}_speaker_pairs"] = sum(1 for v in per_pair if v == v)
    out["items"] = sum(len(v) for v in groups.values())
    return out
