"""Dynamic time warping over frame-distance matrices, vectorised along anti-diagonals (no compiled
extension) and across a batch of pairs: the ABX distance between items, and the alignment of a
resynthesis to its reference."""

from __future__ import annotations

import numpy as np


def _accumulate(cost: np.ndarray, moves: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Accumulated cost and path length [B, N+1, M+1] of padded costs [B, N, M] with steps (1,1), (0,1),
    (1,0); with `moves`, also the step taken into each cell (0 diagonal, 1 from the left, 2 from above).
    Ties prefer the diagonal, then the left, as Libri-light's ABX DTW backtracking: path lengths, hence
    path-averaged costs, then match it."""
    b, rows, cols = cost.shape
    acc = np.full((b, rows + 1, cols + 1), np.inf)
    steps = np.zeros((b, rows + 1, cols + 1), dtype=np.int32)
    move = np.zeros((b, rows + 1, cols + 1), dtype=np.int8) if moves else None
    acc[:, 0, 0] = 0.0
    for d in range(2, rows + cols + 1):
        i = np.arange(max(1, d - cols), min(rows, d - 1) + 1)
        j = d - i
        cand = np.stack([acc[:, i - 1, j - 1], acc[:, i, j - 1], acc[:, i - 1, j]])
        k = np.argmin(cand, axis=0)
        acc[:, i, j] = cost[:, i - 1, j - 1] + np.take_along_axis(cand, k[None], 0)[0]
        prev = np.stack([steps[:, i - 1, j - 1], steps[:, i, j - 1], steps[:, i - 1, j]])
        steps[:, i, j] = np.take_along_axis(prev, k[None], 0)[0] + 1
        if moves:
            move[:, i, j] = k
    return acc, steps, move


def dtw_batch(cost: np.ndarray, n: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Path-averaged DTW cost of many pairs: `cost` [B, N, M] padded, pair b using its top-left [n_b, m_b]
    block (padding never reaches it: a cell depends only on cells above and to its left)."""
    acc, steps, _ = _accumulate(cost, moves=False)
    idx = np.arange(len(cost))
    return acc[idx, n, m] / steps[idx, n, m]


def dtw(cost: np.ndarray, return_path: bool = False) -> tuple[float, list[tuple[int, int]] | None]:
    """Cheapest monotonic alignment of one [n, m] distance matrix: the accumulated cost divided by the
    path length and, on request, the path as (i, j) pairs."""
    n, m = cost.shape
    if n == 0 or m == 0:
        raise ValueError("dtw of an empty sequence")
    acc, steps, move = _accumulate(cost[None], moves=return_path)
    total = float(acc[0, n, m] / steps[0, n, m])
    if not return_path:
        return total, None
    path, i, j = [], n, m
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        k = move[0, i, j]
        i, j = (i - 1, j - 1) if k == 0 else (i, j - 1) if k == 1 else (i - 1, j)
    return total, path[::-1]
