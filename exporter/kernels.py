"""Compiled inner loops of the window features and the tree models: one pass, no temporaries.

numpy can only walk trees level by level over whole [rows, trees] buffers, and computes each
window statistic as several calls over temporaries the size of the window; on one API
prediction those calls' fixed costs are most of the time. These loops visit each series and
each row's nodes directly, with the GIL released so the API keeps answering while a cycle
scores. They are compiled by numba (already installed with pyod) on first use (~0.5 s
each) and cached on disk next to this file where that is writable, so later processes load
them in milliseconds; they take only plain arrays the callers have checked.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit

BLOCK_ROWS = 256  # rows that walk one tree before the next: their features stay in L2


def _compiled(function: Callable) -> Callable:
    """``njit`` without the GIL, cached on disk when numba finds a writable cache directory;
    without one (a read-only container and no NUMBA_CACHE_DIR) numba refuses ``cache=True``
    at import, so compile in each process instead."""
    try:
        return njit(nogil=True, cache=True)(function)
    except RuntimeError:
        return njit(nogil=True)(function)


@_compiled
def heap_path_sums(
    X: np.ndarray, feature: np.ndarray, threshold: np.ndarray, path: np.ndarray, depth: int
) -> np.ndarray:
    """Sum over trees of each row's path length, trees laid out as complete binary trees of
    ``depth`` levels in heap order (models/forest.py's ``_Layout``): ``feature``/``threshold`` flat
    [trees * (2**depth - 1)], ``path`` flat [trees * 2**depth] at the last level; ``X`` float32.

    A level is ``node = 2 * node + (x > threshold)``: no data-dependent branch, so the CPU does
    not mispredict half the steps (a pointer-chasing walk of sklearn's node order measured no
    faster than sklearn). Tree by tree over blocks of rows keeps a tree's nodes in cache."""
    rows = X.shape[0]
    width = (1 << depth) - 1
    trees = path.shape[0] >> depth
    out = np.zeros(rows)
    for start in range(0, rows, BLOCK_ROWS):
        stop = min(rows, start + BLOCK_ROWS)
        for t in range(trees):
            base = t * width - 1
            leaf_base = (t << depth) - (1 << depth)
            i = start
            while i + 4 <= stop:  # four independent walks at once: their loads overlap
                a = b = c = d = 1
                for _ in range(depth):
                    a = 2 * a + (X[i, feature[base + a]] > threshold[base + a])
                    b = 2 * b + (X[i + 1, feature[base + b]] > threshold[base + b])
                    c = 2 * c + (X[i + 2, feature[base + c]] > threshold[base + c])
                    d = 2 * d + (X[i + 3, feature[base + d]] > threshold[base + d])
                out[i] += path[leaf_base + a]
                out[i + 1] += path[leaf_base + b]
                out[i + 2] += path[leaf_base + c]
                out[i + 3] += path[leaf_base + d]
                i += 4
            for j in range(i, stop):
                node = 1
                for _ in range(depth):
                    node = 2 * node + (X[j, feature[base + node]] > threshold[base + node])
                out[j] += path[leaf_base + node]
    return out


@_compiled
def heap_leaf_sums(
    X: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    default_left: np.ndarray,
    value: np.ndarray,
    depth: int,
) -> np.ndarray:
    """Sum over boosted trees (models/treeshap.py's ``HeapTrees``) of the leaf each row reaches:
    ``x < threshold`` goes left, a missing value (NaN or infinite) follows ``default_left``."""
    rows = X.shape[0]
    width = (1 << depth) - 1
    trees = value.shape[0] >> depth
    out = np.zeros(rows)
    for start in range(0, rows, BLOCK_ROWS):
        stop = min(rows, start + BLOCK_ROWS)
        for t in range(trees):
            base = t * width - 1
            leaf_base = (t << depth) - (1 << depth)
            for i in range(start, stop):
                node = 1
                for _ in range(depth):
                    at = base + node
                    x = X[i, feature[at]]
                    if np.isfinite(x):
                        node = 2 * node + (x >= threshold[at])
                    else:
                        node = 2 * node + (not default_left[at])
                out[i] += value[leaf_base + node]
    return out


@_compiled
def leaf_shap(
    X: np.ndarray,
    feature: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    missing: np.ndarray,
    size: np.ndarray,
    table: np.ndarray,
    n_features: int,
    bias: float,
) -> np.ndarray:
    """SHAP values [rows, features + 1] (last column the bias) from models/treeshap.py's leaf tables:
    for every leaf, the bit set of its path conditions the row meets (bit k: the k-th path
    feature lies in [low, high), or is missing (NaN or infinite) and ``missing`` says the
    default direction follows the path; the ``width - size`` padding bits are always met)
    picks the leaf's tabled part of each of its path features' values. ``X`` is float32."""
    rows, leaves, width = X.shape[0], feature.shape[0], feature.shape[1]
    out = np.zeros((rows, n_features + 1))
    for i in range(rows):
        out[i, n_features] = bias
        for leaf in range(leaves):
            m = size[leaf]
            met = ((1 << width) - 1) ^ ((1 << m) - 1)
            for k in range(m):
                x = X[i, feature[leaf, k]]
                if np.isfinite(x):
                    if low[leaf, k] <= x < high[leaf, k]:
                        met |= 1 << k
                elif missing[leaf, k]:
                    met |= 1 << k
            entry = (leaf << width) + met
            for k in range(m):
                out[i, feature[leaf, k]] += table[entry, k]
    return out


@_compiled
def series_stats(x: np.ndarray, short: int, edge: int) -> np.ndarray:
    """features.PER_SIGNAL of each row of ``x`` [series, steps] (NaN or infinite: no sample),
    in that order, in one pass per series instead of ~60 numpy calls over temporaries the size
    of ``x`` (most of a single prediction's time, ~0.3 s of a cycle at 10,000 targets)."""
    rows, steps = x.shape
    out = np.full((rows, 16), np.nan)
    buffer = np.empty(steps)
    recent_start = max(steps - short, 0)
    for i in range(rows):
        row = x[i]
        count, total, newest, gap = 0, 0.0, np.nan, -1
        lowest, highest = np.inf, -np.inf
        for j in range(steps):
            v = row[j]
            if np.isfinite(v):
                count += 1
                total += v
                lowest = min(lowest, v)
                highest = max(highest, v)
                newest = v
                gap = steps - 1 - j
        if count == 0:
            continue
        mean = total / count
        spread = 0.0
        for j in range(steps):
            if np.isfinite(row[j]):
                spread += (row[j] - mean) ** 2
        std = np.sqrt(spread / count)
        slope = _slope(row, 0)
        scale = max(std, 1e-3 * (abs(mean) + 1e-3))
        median = _median(row, 0, buffer)
        recent_median = _median(row, recent_start, buffer)
        recent = 0
        for j in range(recent_start, steps):
            if np.isfinite(row[j]):
                recent += 1
        out[i, 0] = newest
        out[i, 1] = mean
        out[i, 2] = std
        out[i, 3] = lowest
        out[i, 4] = highest
        out[i, 5] = slope
        out[i, 6] = (newest - mean) / scale
        out[i, 7] = _slope(row, recent_start)
        if steps - edge > 0:
            out[i, 8] = (_mean(row, steps - edge, steps) - _mean(row, 0, edge)) / (steps - edge)
        out[i, 9] = slope * steps / (abs(mean) + 1e-6)
        out[i, 10] = 1.0 - count / max(steps, 1)
        out[i, 11] = gap
        out[i, 12] = median
        out[i, 13] = recent_median
        out[i, 14] = (recent_median - median) / (abs(median) + 1e-6)
        out[i, 15] = 1.0 - recent / max(steps - recent_start, 1)
    return out


@_compiled
def _slope(row: np.ndarray, start: int) -> float:
    """Least-squares slope per step over the present samples of ``row[start:]`` (steps counted
    from ``start``); NaN with fewer than two."""
    count, t_total, x_total = 0, 0.0, 0.0
    for j in range(start, row.shape[0]):
        if np.isfinite(row[j]):
            count += 1
            t_total += j - start
            x_total += row[j]
    if count < 2:
        return np.nan
    t_mean, x_mean = t_total / count, x_total / count
    product, square = 0.0, 0.0
    for j in range(start, row.shape[0]):
        if np.isfinite(row[j]):
            dt = (j - start) - t_mean
            product += dt * (row[j] - x_mean)
            square += dt * dt
    return product / square


@_compiled
def _mean(row: np.ndarray, start: int, stop: int) -> float:
    count, total = 0, 0.0
    for j in range(start, stop):
        if np.isfinite(row[j]):
            count += 1
            total += row[j]
    return total / count if count else np.nan


@_compiled
def _median(row: np.ndarray, start: int, buffer: np.ndarray) -> float:
    """Median of the present samples of ``row[start:]`` (NaN when there are none), sorted by
    insertion into ``buffer``: a window is tens of samples, and this allocates nothing."""
    count = 0
    for j in range(start, row.shape[0]):
        v = row[j]
        if np.isfinite(v):
            k = count
            while k > 0 and buffer[k - 1] > v:
                buffer[k] = buffer[k - 1]
                k -= 1
            buffer[k] = v
            count += 1
    if count == 0:
        return np.nan
    return (buffer[(count - 1) // 2] + buffer[count // 2]) / 2
