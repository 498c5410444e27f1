"""Compiled inner loops of the window features and the tree models: one pass, no temporaries.

numpy can only walk trees level by level over whole [rows, trees] buffers, and computes each
window statistic as several calls over temporaries the size of the window; on one API
prediction those calls' fixed costs are most of the time. These loops visit each series and
each row's nodes directly, with the GIL released so the API keeps answering while a cycle
scores. They take only plain arrays the callers have checked.

They are written for numba (already installed with pyod) and used compiled ahead of time when
``python -m exporter.precompile`` has built them from this file (exporter/compiled.py: one
extension module that needs numpy alone, ~130 MB less than numba at run time; the image, the
test and demo scripts build it). Otherwise numba compiles each on first use (~0.5 s each) and
caches it on disk next to this file where that is writable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial

import numpy as np

from exporter import compiled

BLOCK_ROWS = 256  # rows that walk one tree before the next: their features stay in L2
SPLIT_ROWS = 8192  # from this many rows, a row-wise kernel runs on every core the process may use

AHEAD_OF_TIME, JIT_REASON = compiled.selected()
MODE = "ahead-of-time" if AHEAD_OF_TIME is not None else f"numba JIT ({JIT_REASON})"


def _compiled(function: Callable | None = None, **options: object) -> Callable:
    """The public kernel ``function`` from the ahead-of-time module when there is one (its
    private helpers are compiled into it: the plain function is returned and never called from
    Python); otherwise ``njit`` without the GIL, cached on disk when numba finds a writable
    cache directory. ``@_compiled(option=...)`` passes njit options, the ahead-of-time build too."""
    if function is None:
        return partial(_compiled, **options)
    if AHEAD_OF_TIME is not None:
        return AHEAD_OF_TIME.get(function.__name__, function)
    from numba import njit

    try:
        return njit(nogil=True, cache=True, **options)(function)
    except RuntimeError:  # no writable cache directory (a read-only container, no NUMBA_CACHE_DIR)
        return njit(nogil=True, **options)(function)


@cache
def _pool() -> tuple[ThreadPoolExecutor | None, int]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return (ThreadPoolExecutor(max_workers=cores, thread_name_prefix="kernel") if cores > 1 else None), cores


def by_rows(kernel: Callable, X: np.ndarray, *args: object) -> np.ndarray:
    """``kernel(X, *args)`` for a kernel whose output row i depends on ``X[i]`` alone, split
    across the cores when ``X`` is large (the kernels release the GIL): a cycle's forests score
    40,000+ windows while Prometheus, which the cycle waits on otherwise, is idle."""
    pool, cores = _pool()
    if pool is None or math.prod(X.shape[:-1]) < SPLIT_ROWS:  # rows of the last axis: series, windows
        return kernel(X, *args)
    parts = np.array_split(np.arange(len(X)), cores)
    futures = [pool.submit(kernel, X[part[0] : part[-1] + 1], *args) for part in parts]
    return np.concatenate([future.result() for future in futures])


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


COLUMN_ROWS = 4  # from this many rows SHAP runs leaf by leaf over blocks of rows


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
    picks the leaf's tabled part of each of its path features' values. ``X`` is float32.

    A few rows go row by row. From ``COLUMN_ROWS`` on, each leaf tests one feature over a block
    of rows at a time, contiguous in a transposed copy and with the leaf's table in L1 (~3x
    faster than every leaf once per row). Either way a row's values add up leaf after leaf, so
    they do not depend on the batch it came in. The conditions are combined without a branch:
    a row meets about half of them at random, and a mispredicted branch costs more than both
    tests."""
    rows, leaves, width = X.shape[0], feature.shape[0], feature.shape[1]
    out = np.zeros((rows, n_features + 1))
    out[:, n_features] = bias
    if rows < COLUMN_ROWS:
        for i in range(rows):
            for leaf in range(leaves):
                met = ((1 << width) - 1) ^ ((1 << size[leaf]) - 1)
                for k in range(size[leaf]):
                    x = X[i, feature[leaf, k]]
                    finite = np.isfinite(x)
                    inside = (low[leaf, k] <= x) & (x < high[leaf, k])
                    met |= np.int64((finite & inside) | (~finite & missing[leaf, k])) << k
                for k in range(size[leaf]):
                    out[i, feature[leaf, k]] += table[leaf, k, met]
        return out
    columns = np.empty((X.shape[1], rows), np.float32)  # a missing value is NaN here, never infinite
    for i in range(rows):
        for j in range(X.shape[1]):
            columns[j, i] = X[i, j] if np.isfinite(X[i, j]) else np.nan
    sums = np.zeros((n_features, BLOCK_ROWS))
    met = np.empty(BLOCK_ROWS, np.int32)
    for start in range(0, rows, BLOCK_ROWS):
        count = min(rows, start + BLOCK_ROWS) - start
        sums[:] = 0.0
        for leaf in range(leaves):
            met[:count] = ((1 << width) - 1) ^ ((1 << size[leaf]) - 1)
            for k in range(size[leaf]):
                lo, hi, miss, bit = low[leaf, k], high[leaf, k], missing[leaf, k], np.int32(1 << k)
                x = columns[feature[leaf, k], start : start + count]
                for r in range(count):
                    met[r] |= np.int32(((lo <= x[r]) & (x[r] < hi)) | ((x[r] != x[r]) & miss)) * bit
            for k in range(size[leaf]):
                part = table[leaf, k]
                into = sums[feature[leaf, k]]
                for r in range(count):
                    into[r] += part[met[r]]
        out[start : start + count, :n_features] = sums[:, :count].T
    return out


@_compiled
def series_stats(x: np.ndarray, short: int, edge: int) -> np.ndarray:
    """features.PER_SIGNAL of each series ``x[i, s]`` of ``x`` [rows, signals, steps] (NaN or
    infinite: no sample), in that order, ``[rows, signals, 16]``, in one pass per series instead
    of ~60 numpy calls over temporaries the size of ``x`` (most of a single prediction's time,
    ~0.3 s of a cycle at 10,000 targets). ``x`` may be a strided view (a window's
    ``values.transpose(0, 2, 1)``): the series are read in place, not copied."""
    rows, signals, steps = x.shape
    out = np.full((rows, signals, 16), np.nan)
    buffer = np.empty(steps)
    recent_start = max(steps - short, 0)
    for i in range(rows):
        for s in range(signals):
            row = x[i, s]
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
            stats = out[i, s]
            stats[0] = newest
            stats[1] = mean
            stats[2] = std
            stats[3] = lowest
            stats[4] = highest
            stats[5] = slope
            stats[6] = (newest - mean) / scale
            stats[7] = _slope(row, recent_start)
            if steps - edge > 0:
                stats[8] = (_mean(row, steps - edge, steps) - _mean(row, 0, edge)) / (steps - edge)
            stats[9] = slope * steps / (abs(mean) + 1e-6)
            stats[10] = 1.0 - count / max(steps, 1)
            stats[11] = gap
            stats[12] = median
            stats[13] = recent_median
            stats[14] = (recent_median - median) / (abs(median) + 1e-6)
            stats[15] = 1.0 - recent / max(steps - recent_start, 1)
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
    """Median of the present samples of ``row[start:]`` (NaN when there are none), by
    quickselect in ``buffer``: a window is tens of samples, and this allocates nothing
    (insertion sort, n**2 / 4 moves, was most of the window features' time)."""
    count = 0
    for j in range(start, row.shape[0]):
        if np.isfinite(row[j]):
            buffer[count] = row[j]
            count += 1
    if count == 0:
        return np.nan
    upper = _select(buffer, count, count // 2)
    if count % 2:
        return upper
    lower = buffer[0]  # after the select, buffer[:count // 2] holds the smaller half
    for k in range(1, count // 2):
        lower = max(lower, buffer[k])
    return (lower + upper) / 2


@_compiled
def _select(buffer: np.ndarray, count: int, k: int) -> float:
    """The k-th smallest of ``buffer[:count]`` (Hoare's quickselect, middle pivot); leaves the
    smaller values before position k."""
    low, high = 0, count - 1
    while low < high:
        pivot = buffer[(low + high) // 2]
        i, j = low, high
        while i <= j:
            while buffer[i] < pivot:
                i += 1
            while buffer[j] > pivot:
                j -= 1
            if i <= j:
                buffer[i], buffer[j] = buffer[j], buffer[i]
                i += 1
                j -= 1
        if k <= j:
            high = j
        elif k >= i:
            low = i
        else:
            break
    return buffer[k]


_EXACT_POWERS = np.array([10.0**k for k in range(23)])  # every one exact in a double
_FAST_MANTISSA = 1 << 53  # below it a decimal mantissa is exact in a double


@_compiled
def matrix_samples(body: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple:
    """The samples of a range-query answer's sample lists ``body[starts[i]:ends[i]]``, each
    ``[[t,"v"],...]`` in Prometheus' layout, parsed in place (no copy of the text).

    Returns ``(layout, counts, pairs, long_text, long_index, odd)``: whether every list has
    that layout (if not, the caller decodes the answer generically); samples per series;
    ``pairs`` [samples, 2] (t, v); the numbers this loop cannot round exactly itself (more
    than 15-16 significant digits, a large exponent) as space-separated text and their flat
    indices into ``pairs``, for numpy's correctly rounded parser; and ``odd`` [k, 3] (start,
    end, flat index) of value strings that are not plain numbers, for ``float`` to judge."""
    series = len(starts)
    counts = np.zeros(series, np.int64)
    for i in range(series):
        opened = 0
        for p in range(starts[i], ends[i]):
            opened += body[p] == 91  # [
        counts[i] = max(opened - 1, 0)
    pairs = np.full((counts.sum(), 2), np.nan)
    flat = pairs.reshape(-1)
    long_text = np.empty(1024, np.uint8)
    long_index = np.empty(64, np.int64)
    odd = np.empty((0, 3), np.int64)
    longs, text_size, odds, at = 0, 0, 0, 0  # at: flat index of the next timestamp
    broken = (False, counts, pairs, long_text[:0], long_index[:0], odd)
    for i in range(series):
        p, stop = starts[i], ends[i]
        if body[p] != 91:
            return broken
        p += 1
        for s in range(counts[i]):
            if s:
                if body[p] != 44:  # ,
                    return broken
                p += 1
            if p >= stop or body[p] != 91:
                return broken
            flat[at], end, kind = _number(body, p + 1, stop)
            if kind == 2 or end + 1 >= stop or body[end] != 44 or body[end + 1] != 34:  # ,"
                return broken
            if kind == 1:
                long_text, long_index, text_size = _kept(
                    body, p + 1, end, at, long_text, long_index, text_size, longs
                )
                longs += 1
            p = end + 2
            close = p
            while close < stop and body[close] != 34:  # the closing quote
                if body[close] == 92:  # an escape: json's path reads it
                    return broken
                close += 1
            if close + 1 >= stop or body[close + 1] != 93:  # "]
                return broken
            flat[at + 1], end, kind = _number(body, p, close)
            if kind == 1 and end == close:
                long_text, long_index, text_size = _kept(
                    body, p, end, at + 1, long_text, long_index, text_size, longs
                )
                longs += 1
            elif kind != 0 or end != close:
                if odds == len(odd):
                    grown = np.empty((2 * odds + 8, 3), np.int64)
                    grown[:odds] = odd[:odds]
                    odd = grown
                odd[odds, 0], odd[odds, 1], odd[odds, 2] = p, close, at + 1
                odds += 1
            p = close + 2
            at += 2
        if p + 1 != stop or body[p] != 93:
            return broken
    return True, counts, pairs, long_text[:text_size], long_index[:longs], odd[:odds]


@_compiled
def _kept(
    body: np.ndarray,
    start: int,
    end: int,
    index: int,
    text: np.ndarray,
    indices: np.ndarray,
    size: int,
    count: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """``body[start:end]`` and a space appended to ``text`` at ``size``, ``index`` to ``indices``
    at ``count`` (both grown when full)."""
    if size + end - start + 1 > len(text):
        grown = np.empty(2 * (size + end - start + 1), np.uint8)
        grown[:size] = text[:size]
        text = grown
    if count == len(indices):
        more = np.empty(2 * count, np.int64)
        more[:count] = indices
        indices = more
    text[size : size + end - start] = body[start:end]
    text[size + end - start] = 32
    indices[count] = index
    return text, indices, size + end - start + 1


@_compiled
def _number(body: np.ndarray, p: int, stop: int) -> tuple[float, int, int]:
    """(value, end, kind) of the JSON number at ``body[p:stop]`` (also Prometheus' ``NaN``,
    ``+Inf``, ``-Inf``): kind 0, exact here; 1, a number this loop cannot round exactly (more
    than 15-16 significant digits, a large exponent); 2, not a JSON number."""
    start = p
    if stop - p >= 3 and body[p] == 78 and body[p + 1] == 97 and body[p + 2] == 78:  # NaN
        return np.nan, p + 3, 0
    infinite = stop - p >= 4 and (body[p] == 43 or body[p] == 45) and body[p + 1] == 73  # +I -I
    if infinite and body[p + 2] == 110 and body[p + 3] == 102:  # nf
        return (-np.inf if body[p] == 45 else np.inf), p + 4, 0
    negative = p < stop and body[p] == 45  # -
    if negative:
        p += 1
    mantissa, digits, decimals, integer_digits = 0, 0, 0, 0
    exact = True
    while p < stop and 48 <= body[p] <= 57:
        integer_digits += 1
        mantissa, digits, exact = _digit(mantissa, digits, exact, np.int64(body[p]) - 48)
        p += 1
    if integer_digits == 0 or (integer_digits > 1 and body[p - integer_digits] == 48):
        return np.nan, start, 2  # JSON: at least one digit, no leading zero
    if p < stop and body[p] == 46:  # .
        p += 1
        if p >= stop or not 48 <= body[p] <= 57:
            return np.nan, start, 2
        while p < stop and 48 <= body[p] <= 57:
            mantissa, digits, exact = _digit(mantissa, digits, exact, np.int64(body[p]) - 48)
            decimals += 1
            p += 1
    exponent = 0
    if p < stop and (body[p] == 101 or body[p] == 69):  # e E
        p += 1
        sign = 1
        if p < stop and (body[p] == 43 or body[p] == 45):
            sign = -1 if body[p] == 45 else 1
            p += 1
        if p >= stop or not 48 <= body[p] <= 57:
            return np.nan, start, 2
        while p < stop and 48 <= body[p] <= 57:
            exponent = min(exponent * 10 + (np.int64(body[p]) - 48), 100_000)
            p += 1
        exponent *= sign
    power = exponent - decimals
    if not exact or mantissa > _FAST_MANTISSA or not -22 <= power <= 22:
        return np.nan, p, 1
    value = float(mantissa)
    value = value * _EXACT_POWERS[power] if power >= 0 else value / _EXACT_POWERS[-power]
    return (-value if negative else value), p, 0


@_compiled
def _digit(mantissa: int, digits: int, exact: bool, digit: int) -> tuple[int, int, bool]:
    """One more decimal digit of a mantissa: an int64 holds any 18 (leading zeros are free)."""
    if digits >= 18:
        return mantissa, digits, False
    mantissa = mantissa * 10 + digit
    return mantissa, digits + (mantissa != 0), exact


_METRIC = np.frombuffer(b'{"metric":', np.uint8)
_VALUES = np.frombuffer(b',"values":[', np.uint8)
_BLOCK_END = np.frombuffer(b"]]}", np.uint8)


@_compiled
def matrix_layout(body: np.ndarray, start: int) -> tuple:
    """Where each series of a range-query answer is, from ``start`` (just inside ``"result":[``):
    ``(layout, labels, starts, ends)`` with the series' label objects as one JSON array text
    and each sample list's ``[starts[i], ends[i])``. ``layout`` is False when the answer is not
    in Prometheus' own layout (``{"metric":{...},"values":[[...]]}`` joined by commas); a
    quote inside a label value is escaped, so these markers cannot occur inside one."""
    size = len(body)
    labels = np.empty(1024, np.uint8)
    labels[0] = 91  # [
    used = 1
    starts = np.empty(64, np.int64)
    ends = np.empty(64, np.int64)
    series = 0
    broken = (False, labels[:0], starts[:0], ends[:0])
    p = start
    if p < size and body[p] == 93:  # ]: no series
        labels[1] = 93
        return True, labels[:2], starts[:0], ends[:0]
    while True:
        if not _at(body, p, _METRIC):
            return broken
        values = _find(body, p + len(_METRIC), _VALUES)
        if values < 0:
            return broken
        end = _find(body, values + len(_VALUES), _BLOCK_END)
        if end < 0:
            return broken
        need = used + values - p - len(_METRIC) + 2
        if need > len(labels):
            grown = np.empty(2 * need, np.uint8)
            grown[:used] = labels[:used]
            labels = grown
        if series:
            labels[used] = 44  # ,
            used += 1
        labels[used : used + values - p - len(_METRIC)] = body[p + len(_METRIC) : values]
        used += values - p - len(_METRIC)
        if series == len(starts):
            more_starts = np.empty(2 * series, np.int64)
            more_ends = np.empty(2 * series, np.int64)
            more_starts[:series] = starts
            more_ends[:series] = ends
            starts, ends = more_starts, more_ends
        starts[series] = values + len(_VALUES) - 1
        ends[series] = end + 2
        series += 1
        p = end + len(_BLOCK_END)
        if p >= size:
            return broken
        if body[p] == 93:  # ]
            break
        if body[p] != 44:  # ,
            return broken
        p += 1
    labels[used] = 93
    return True, labels[: used + 1], starts[:series], ends[:series]


@_compiled
def _at(body: np.ndarray, p: int, marker: np.ndarray) -> bool:
    if p + len(marker) > len(body):
        return False
    for k in range(len(marker)):  # noqa: SIM110 - numba compiles this loop, not all() of a generator
        if body[p + k] != marker[k]:
            return False
    return True


@_compiled
def _find(body: np.ndarray, p: int, marker: np.ndarray) -> int:
    first = marker[0]
    for q in range(p, len(body) - len(marker) + 1):
        if body[q] == first and _at(body, q, marker):
            return q
    return -1


_SIGNALS_KEY = np.frombuffer(b"signals", np.uint8)
_STEP_KEY = np.frombuffer(b"step", np.uint8)
_TIMESTAMP_KEY = np.frombuffer(b"timestamp", np.uint8)
_NULL = np.frombuffer(b"null", np.uint8)


@_compiled
def observation_windows(
    body: np.ndarray, names: np.ndarray, name_ends: np.ndarray, window: int, min_points: int, max_items: int
) -> tuple:
    """A predict body of raw-value observations (``{"signals": {name: [number or null, ...]},
    "step": ..., "timestamp": ...}`` or a list of 1 to ``max_items`` of them), decoded straight
    into ``values`` [rows, window, signals] (NaN where nothing was sent; a series of n points
    fills the last n steps). ``names`` holds the known signal names back to back, name s ending
    at ``name_ends[s]``.

    Returns ``(accepted, single, values, kinds, numbers, spans, long_text, long_index)``. Only
    bodies that are certainly valid are accepted: every key known and given once, no escape or
    control character in a string, samples plain JSON numbers or null, ``min_points`` to
    ``window`` of them per signal, at least one signal; for anything else (a selector, a bad
    body) ``accepted`` is False and the caller's general path decodes and judges the body.
    Per row, ``kinds[row, 0]`` (step) and ``kinds[row, 1]`` (timestamp) are 0 for absent or
    null, 1 for a number in ``numbers``, 2 for a number to parse and 3 for a string, both at
    ``spans[row, c]`` (start, end); samples this loop cannot round exactly (see ``_number``)
    are in ``long_text``, space-separated, with their flat indices into ``values``."""
    size, signals = len(body), len(name_ends)
    capacity = 4
    values = np.full((capacity, window, signals), np.nan)
    kinds = np.zeros((capacity, 2), np.int64)
    numbers = np.zeros((capacity, 2))
    spans = np.zeros((capacity, 2, 2), np.int64)
    # (start, end, flat index into values) of each sample to parse outside: a list, as arrays
    # regrown in the sample loop would halve its speed even when no sample needs it
    longs = [(0, 0, 0) for _ in range(0)]
    series = np.empty(window)
    seen = np.zeros(signals, np.bool_)
    nothing = np.empty(0, np.uint8)
    broken = (False, False, values[:0], kinds[:0], numbers[:0], spans[:0], nothing, nothing.astype(np.int64))
    rows = 0
    p = _skip_space(body, 0)
    single = p < size and body[p] == 123  # {
    if not single:
        if p >= size or body[p] != 91:  # [
            return broken
        p = _skip_space(body, p + 1)
    while True:
        if rows == max_items or p >= size or body[p] != 123:
            return broken
        if rows == capacity:
            capacity *= 2
            grown = np.full((capacity, window, signals), np.nan)
            grown[:rows] = values
            values = grown
            more_kinds = np.zeros((capacity, 2), np.int64)
            more_kinds[:rows] = kinds
            kinds = more_kinds
            more_numbers = np.zeros((capacity, 2))
            more_numbers[:rows] = numbers
            numbers = more_numbers
            more_spans = np.zeros((capacity, 2, 2), np.int64)
            more_spans[:rows] = spans
            spans = more_spans
        has_signals, has_step, has_time = False, False, False
        p = _skip_space(body, p + 1)
        while True:  # the observation's keys
            key, key_end = _string(body, p)
            if key < 0:
                return broken
            p = _skip_space(body, key_end + 1)
            if p >= size or body[p] != 58:  # :
                return broken
            p = _skip_space(body, p + 1)
            if _is(body, key, key_end, _SIGNALS_KEY) and not has_signals:
                has_signals = True
                if p >= size or body[p] != 123:
                    return broken
                seen[:] = False
                p = _skip_space(body, p + 1)
                while True:  # name: [samples]
                    name, name_end = _string(body, p)
                    if name < 0:
                        return broken
                    s = _known(body, name, name_end, names, name_ends)
                    if s < 0 or seen[s]:
                        return broken
                    seen[s] = True
                    p = _skip_space(body, name_end + 1)
                    if p >= size or body[p] != 58:
                        return broken
                    p = _skip_space(body, p + 1)
                    if p >= size or body[p] != 91:
                        return broken
                    p = _skip_space(body, p + 1)
                    count, first_long = 0, len(longs)
                    if p < size and body[p] == 93:  # ]: empty, under min_points
                        return broken
                    while True:
                        if count == window:
                            return broken
                        if _at(body, p, _NULL):
                            series[count], p = np.nan, p + 4
                        else:
                            value, end, kind = _sample(body, p)
                            if kind == 2:
                                return broken
                            if kind == 1:
                                longs.append((p, end, count))
                            series[count], p = value, end
                        count += 1
                        p = _skip_space(body, p)
                        if p < size and body[p] == 44:  # ,
                            p = _skip_space(body, p + 1)
                        elif p < size and body[p] == 93:
                            break
                        else:
                            return broken
                    if count < min_points:
                        return broken
                    values[rows, window - count :, s] = series[:count]
                    for k in range(first_long, len(longs)):  # position in the series -> flat index
                        start, end, at = longs[k]
                        longs[k] = (start, end, (rows * window + window - count + at) * signals + s)
                    p = _skip_space(body, p + 1)
                    if p < size and body[p] == 44:
                        p = _skip_space(body, p + 1)
                    elif p < size and body[p] == 125:  # }
                        break
                    else:
                        return broken
                p += 1
            elif _is(body, key, key_end, _STEP_KEY) and not has_step:
                has_step = True
                p = _scalar(body, p, rows, 0, kinds, numbers, spans)
            elif _is(body, key, key_end, _TIMESTAMP_KEY) and not has_time:
                has_time = True
                p = _scalar(body, p, rows, 1, kinds, numbers, spans)
            else:
                return broken
            if p < 0:
                return broken
            p = _skip_space(body, p)
            if p < size and body[p] == 44:
                p = _skip_space(body, p + 1)
            elif p < size and body[p] == 125:
                break
            else:
                return broken
        if not has_signals:
            return broken
        rows += 1
        p = _skip_space(body, p + 1)
        if single:
            break
        if p < size and body[p] == 44:
            p = _skip_space(body, p + 1)
        elif p < size and body[p] == 93:
            p = _skip_space(body, p + 1)
            break
        else:
            return broken
    if p != size:
        return broken
    long_text = np.empty(sum([end - start + 1 for start, end, _ in longs]), np.uint8)
    long_index = np.empty(len(longs), np.int64)
    used = 0
    for k, (start, end, at) in enumerate(longs):
        long_text[used : used + end - start] = body[start:end]
        long_text[used + end - start] = 32  # a space
        used += end - start + 1
        long_index[k] = at
    return True, single, values[:rows], kinds[:rows], numbers[:rows], spans[:rows], long_text, long_index


@_compiled
def _skip_space(body: np.ndarray, p: int) -> int:
    while p < len(body) and (body[p] == 32 or body[p] == 10 or body[p] == 13 or body[p] == 9):
        p += 1
    return p


@_compiled
def _string(body: np.ndarray, p: int) -> tuple[int, int]:
    """(start, end) of the text of the JSON string at ``p`` (``body[end]`` its closing quote), or
    (-1, -1) when there is none or it holds an escape or a control character."""
    if p >= len(body) or body[p] != 34:
        return -1, -1
    for q in range(p + 1, len(body)):
        if body[q] == 34:
            return p + 1, q
        if body[q] == 92 or body[q] < 32:
            return -1, -1
    return -1, -1


@_compiled
def _is(body: np.ndarray, start: int, end: int, word: np.ndarray) -> bool:
    return end - start == len(word) and _at(body, start, word)


@_compiled
def _known(body: np.ndarray, start: int, end: int, names: np.ndarray, name_ends: np.ndarray) -> int:
    """Index of the signal named ``body[start:end]``, -1 for a name the model does not know."""
    first = 0
    for s in range(len(name_ends)):
        if _is(body, start, end, names[first : name_ends[s]]):
            return s
        first = name_ends[s]
    return -1


@_compiled
def _sample(body: np.ndarray, p: int) -> tuple[float, int, int]:
    """``_number`` for a JSON number only (not Prometheus' NaN and infinities), with a shorter
    path for the common plain decimal of up to 18 digits; ``-0`` written as an integer is 0,
    as JSON decoders read integers."""
    size = len(body)
    q = p + (p < size and body[p] == 45)  # -
    mantissa, first = 0, q
    while q < size and 48 <= body[q] <= 57:
        mantissa = mantissa * 10 + (np.int64(body[q]) - 48)
        q += 1
    digits = q - first
    if digits == 0 or (digits > 1 and body[first] == 48):
        return np.nan, p, 2  # JSON: at least one digit, no leading zero
    decimals = 0
    if q < size and body[q] == 46:  # .
        q += 1
        while q < size and 48 <= body[q] <= 57:
            mantissa = mantissa * 10 + (np.int64(body[q]) - 48)
            q += 1
            decimals += 1
        if decimals == 0:
            return np.nan, p, 2
    if (
        digits + decimals > 18
        or (q < size and (body[q] == 101 or body[q] == 69))
        or mantissa > _FAST_MANTISSA
    ):
        return _number(body, p, size)  # an exponent, or digits an int64 may not hold exactly
    value = float(mantissa) / _EXACT_POWERS[decimals]
    if body[p] == 45 and (decimals or mantissa):
        value = -value
    return value, q, 0


@_compiled
def _scalar(
    body: np.ndarray, p: int, row: int, column: int, kinds: np.ndarray, numbers: np.ndarray, spans: np.ndarray
) -> int:
    """A step or timestamp value at ``p`` into row ``row`` (see ``observation_windows``); returns
    where it ends, -1 when it is neither null, a number nor a plain string."""
    if _at(body, p, _NULL):
        return p + 4
    if p < len(body) and body[p] == 34:
        start, end = _string(body, p)
        if start < 0:
            return -1
        kinds[row, column], spans[row, column, 0], spans[row, column, 1] = 3, start, end
        return end + 1
    value, end, kind = _sample(body, p)
    if kind == 2:
        return -1
    kinds[row, column], numbers[row, column] = kind + 1, value
    spans[row, column, 0], spans[row, column, 1] = p, end
    return end


@_compiled
def limit_seconds(
    values: np.ndarray, step: float, min_samples: int, min_t: float, horizon: float
) -> np.ndarray:
    """trend.time_to_limit of each row of ``values`` [targets, steps] in one pass per row
    (numpy needed ~12 temporaries the size of ``values``): the least-squares line through the
    present samples, (1 - its level at the newest step) / slope when the slope is positive with
    a t-statistic above ``min_t``, at least ``min_samples`` samples and within ``horizon``."""
    rows, steps = values.shape
    out = np.full(rows, np.nan)
    for i in range(rows):
        row = values[i]
        n, t_total, y_total = 0, 0.0, 0.0
        for j in range(steps):
            if np.isfinite(row[j]):
                n += 1
                t_total += j * step
                y_total += row[j]
        if n < min_samples:
            continue
        t_mean, y_mean = t_total / n, y_total / n
        sxx, sxy = 0.0, 0.0
        for j in range(steps):
            if np.isfinite(row[j]):
                dt = j * step - t_mean
                sxx += dt * dt
                sxy += dt * (row[j] - y_mean)
        if sxx <= 0.0:
            continue
        slope = sxy / sxx
        squares = 0.0
        for j in range(steps):
            if np.isfinite(row[j]):
                dt = j * step - t_mean
                squares += (row[j] - y_mean - slope * dt) ** 2
        error = np.sqrt(squares / max(n - 2, 1) / sxx)
        if not (slope > 0.0 and slope > min_t * error):
            continue
        level = y_mean + slope * ((steps - 1) * step - t_mean)
        seconds = max(1.0 - level, 0.0) / slope
        if seconds <= horizon:
            out[i] = seconds
    return out


@_compiled(error_model="numpy")  # x / 0 is +-inf or NaN, as in the numpy it replaces, not an error
def standardised_windows(
    windows: np.ndarray, level: np.ndarray, scale: np.ndarray, clip: float
) -> np.ndarray:
    """``(windows - level) / scale`` of ``windows`` [rows, steps, signals] against ``level`` and
    ``scale`` [rows, signals], NaN read as 0 and clipped to +-``clip``, as float32 rows of one
    (row, signal) window each, row after row: the null forest's input, in one pass instead of
    numpy's five temporaries of the block (each the block's size in float64), equal to them
    value for value."""
    rows, steps, signals = windows.shape
    out = np.empty((rows * signals, steps), dtype=np.float32)
    for i in range(rows):
        for s in range(signals):
            center, spread = level[i, s], scale[i, s]
            for j in range(steps):
                z = (windows[i, j, s] - center) / spread
                if np.isnan(z):
                    z = 0.0
                elif z > clip:
                    z = clip
                elif z < -clip:
                    z = -clip
                out[i * signals + s, j] = z
    return out


# Student t and normal tails: what the anomaly normaliser reads a short history's z against.
# Here rather than from scipy.special, whose import alone is 26 MB of a sidecar's memory; the
# tests hold them to scipy's values (tests/test_tails.py).

_ROOT_2PI = math.sqrt(2.0 * math.pi)
_NORMAL_LOW = 0.02425  # Acklam's inverse normal: rational fits below, between and above
_ACKLAM_A = (
    -39.69683028665376,
    220.9460984245205,
    -275.9285104469687,
    138.3577518672690,
    -30.66479806614716,
    2.506628277459239,
)
_ACKLAM_B = (-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155288572)
_ACKLAM_C = (
    -0.007784894002430293,
    -0.3223964580411365,
    -2.400758277161838,
    -2.549732539343734,
    4.374664141464968,
    2.938163982698783,
)
_ACKLAM_D = (0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416)


@_compiled
def t_as_normal(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """|t| read against a Student t with ``df`` degrees of freedom, as the normal z of the same
    upper tail (the uncertainty of a mean and deviation from few samples); |t| itself beyond
    10,000 degrees of freedom, NaN where either is NaN. Tails below 1e-300 read as 1e-300."""
    out = np.empty(t.size)
    for i in range(t.size):
        a, d = abs(t[i]), df[i]
        if np.isnan(a) or np.isnan(d):
            out[i] = np.nan
        elif d > 1e4:
            out[i] = a
        else:
            out[i] = -_normal_quantile(max(_t_tail(a, d), 1e-300))
    return out


@_compiled
def t_quantiles(df: np.ndarray, tail: float) -> np.ndarray:
    """The t with upper tail ``tail`` (< 0.5) under each ``df``: Newton steps on the tail,
    kept inside a bracket that bisects whenever a step would leave it; beyond 10,000 degrees of
    freedom (where the tail's continued fraction converges slowly) the normal quantile's
    expansion in 1/df (Abramowitz and Stegun 26.7.5)."""
    z = -_normal_quantile(tail)
    out = np.empty(df.size)
    for i in range(df.size):
        d = df[i]
        if np.isnan(d):
            out[i] = np.nan
            continue
        if d > 1e4:
            out[i] = _t_quantile_expansion(z, d)
            continue
        low = z  # a t's tail is heavier than the normal's: its quantile is beyond
        high = 2.0 * low
        while _t_tail(high, d) > tail:
            low, high = high, 2.0 * high
        x = 0.5 * (low + high)
        for _ in range(200):
            excess = _t_tail(x, d) - tail
            if excess > 0.0:
                low = x
            else:
                high = x
            step = excess / _t_density(x, d)
            following = x + step
            if not (low < following < high):
                following = 0.5 * (low + high)
            if abs(following - x) <= 1e-15 * x:
                x = following
                break
            x = following
        out[i] = x
    return out


@_compiled
def _t_quantile_expansion(z: float, df: float) -> float:
    z2 = z * z
    g1 = (z2 + 1.0) * z / 4.0
    g2 = ((5.0 * z2 + 16.0) * z2 + 3.0) * z / 96.0
    g3 = (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) * z / 384.0
    g4 = ((((79.0 * z2 + 776.0) * z2 + 1482.0) * z2 - 1920.0) * z2 - 945.0) * z / 92160.0
    return z + (g1 + (g2 + (g3 + g4 / df) / df) / df) / df


@_compiled
def error_function(x: np.ndarray) -> np.ndarray:
    out = np.empty(x.size)
    for i in range(x.size):
        out[i] = math.erf(x[i])
    return out


@_compiled
def _t_tail(a: float, df: float) -> float:
    """P(T > a) for a >= 0: half the regularised incomplete beta I_x(df/2, 1/2), x = df/(df+a²)."""
    if a == np.inf:
        return 0.0
    square = a * a
    half = 0.5 * df
    log_beta = _log_gamma_half_ratio(half) - 0.5 * math.log(
        math.pi
    )  # lgamma(half + 1/2) - lgamma(half) - lgamma(1/2)
    return 0.5 * _beta_regularised(half, 0.5, df / (df + square), square / (df + square), log_beta)


@_compiled
def _t_density(a: float, df: float) -> float:
    lead = _log_gamma_half_ratio(0.5 * df) - 0.5 * math.log(df * math.pi)
    return math.exp(lead - 0.5 * (df + 1.0) * math.log1p(a * a / df))


@_compiled
def _log_gamma_half_ratio(a: float) -> float:
    """lgamma(a + 1/2) - lgamma(a): from a = 50 its asymptotic series (the Bernoulli terms up
    to a^-7), as the difference of two large lgammas would lose digits."""
    if a < 50.0:
        return math.lgamma(a + 0.5) - math.lgamma(a)
    inverse = 1.0 / a
    square = inverse * inverse
    return 0.5 * math.log(a) + inverse * (
        -1.0 / 8.0 + square * (1.0 / 192.0 + square * (-1.0 / 640.0 + square * 17.0 / 14336.0))
    )


@_compiled
def _beta_regularised(a: float, b: float, x: float, y: float, log_beta: float) -> float:
    """I_x(a, b), with y = 1 - x given exactly by the caller and log_beta = -log B(a, b): the
    continued fraction on whichever side of the mean converges (Numerical Recipes' betai)."""
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_x = math.log1p(-y) if x > 0.5 else math.log(x)
    log_y = math.log1p(-x) if y > 0.5 else math.log(y)
    front = math.exp(log_beta + a * log_x + b * log_y)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, y) / b


@_compiled
def _beta_fraction(a: float, b: float, x: float) -> float:
    """The incomplete beta's continued fraction by the modified Lentz method."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 2000):
        even = m * (b - m) * x / ((a - 1.0 + 2 * m) * (a + 2 * m))
        d = 1.0 + even * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + even / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1.0 + 2 * m))
        d = 1.0 + odd * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + odd / c
        c = c if abs(c) > tiny else tiny
        change = d * c
        h *= change
        if abs(change - 1.0) < 1e-16:
            break
    return h


@_compiled
def _normal_quantile(p: float) -> float:
    """The standard normal's quantile for 0 < p < 1: Acklam's rational fit (relative error
    1.2e-9), then one Halley step on erfc, which leaves the error at rounding."""
    if p < _NORMAL_LOW or p > 1.0 - _NORMAL_LOW:
        q = math.sqrt(-2.0 * math.log(p if p < 0.5 else 1.0 - p))
        c, d = _ACKLAM_C, _ACKLAM_D
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0
        )
        x = x if p < 0.5 else -x
    else:
        q = p - 0.5
        r = q * q
        a, b = _ACKLAM_A, _ACKLAM_B
        x = (
            (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
            * q
            / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)
        )
    error = 0.5 * math.erfc(-x / math.sqrt(2.0)) - p
    u = error * _ROOT_2PI * math.exp(0.5 * x * x)
    return x - u / (1.0 + 0.5 * x * u)
