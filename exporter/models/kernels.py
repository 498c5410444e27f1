"""Compiled inner loops for the tree models: one pass over rows x trees, no temporaries.

Walking trees is bound by memory latency, and numpy can only walk them level by level over
whole [rows, trees] buffers (several arrays written and read back per level). These loops
visit each row's nodes directly, with the GIL released so the API keeps answering while a
cycle scores. They are compiled by numba (already installed with pyod) on first use (~0.5 s
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
    ``depth`` levels in heap order (forest.py's ``_Layout``): ``feature``/``threshold`` flat
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
    """Sum over boosted trees (treeshap.py's ``HeapTrees``) of the leaf each row reaches:
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
    """SHAP values [rows, features + 1] (last column the bias) from treeshap.py's leaf tables:
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
