"""Dynamic time warping over a frame-distance matrix, vectorised along anti-diagonals (no compiled
extension): the ABX distance between two items and the alignment of a resynthesis to its reference."""

from __future__ import annotations

import numpy as np


def dtw(cost: np.ndarray, return_path: bool = False) -> tuple[float, list[tuple[int, int]] | None]:
    """Cheapest monotonic alignment of a [n, m] distance matrix with steps (1,1), (1,0), (0,1).
    Returns the accumulated cost divided by the path length and, on request, the path as (i, j) pairs."""
    n, m = cost.shape
    if n == 0 or m == 0:
        raise ValueError("dtw of an empty sequence")
    acc = np.full((n + 1, m + 1), np.inf)
    steps = np.zeros((n + 1, m + 1), dtype=np.int64)
    move = np.zeros((n + 1, m + 1), dtype=np.int8)  # 0 diagonal, 1 from above (i-1), 2 from the left (j-1)
    acc[0, 0] = 0.0
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        cand = np.stack([acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]])
        k = np.argmin(cand, axis=0)
        col = np.arange(len(i))
        acc[i, j] = cost[i - 1, j - 1] + cand[k, col]
        steps[i, j] = np.stack([steps[i - 1, j - 1], steps[i - 1, j], steps[i, j - 1]])[k, col] + 1
        move[i, j] = k
    total = float(acc[n, m] / steps[n, m])
    if not return_path:
        return total, None
    path, i, j = [], n, m
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        k = move[i, j]
        i, j = (i - 1, j - 1) if k == 0 else (i - 1, j) if k == 1 else (i, j - 1)
    return total, path[::-1]


def dtw_batch(cost: np.ndarray, n: np.ndarray, m: np.ndarray) -> np.ndarray:
    """`dtw` of many pairs at once: `cost` [B, N, M] padded, pair b using its top-left [n_b, m_b] block;
    returns each pair's path-averaged cost. One pass over the anti-diagonals serves the whole batch."""
    b, rows, cols = cost.shape
    acc = np.full((b, rows + 1, cols + 1), np.inf)
    steps = np.zeros((b, rows + 1, cols + 1), dtype=np.int32)
    acc[:, 0, 0] = 0.0
    for d in range(2, rows + cols + 1):
        i = np.arange(max(1, d - cols), min(rows, d - 1) + 1)
        j = d - i
        cand = np.stack([acc[:, i - 1, j - 1], acc[:, i - 1, j], acc[:, i, j - 1]])
        k = np.argmin(cand, axis=0)
        acc[:, i, j] = cost[:, i - 1, j - 1] + np.take_along_axis(cand, k[None], 0)[0]
        prev = np.stack([steps[:, i - 1, j - 1], steps[:, i - 1, j], steps[:, i, j - 1]])
        steps[:, i, j] = np.take_along_axis(prev, k[None], 0)[0] + 1
    idx = np.arange(b)
    return acc[idx, n, m] / steps[idx, n, m]
