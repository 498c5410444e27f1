"""align places flat range answers in the targets x time x signals array as a per-series loop
would: first series of a target wins, samples off the grid and unwanted series dropped."""

from __future__ import annotations

import numpy as np

from exporter.sources.prometheus import Answer, align


def random_answer(rng: np.random.Generator, grid: np.ndarray) -> Answer:
    keys, stamps, values, offsets = [], [], [], [0]
    for _ in range(rng.integers(0, 30)):
        keys.append(None if rng.random() < 0.1 else (f"pod-{rng.integers(0, 12)}",))
        times = np.sort(
            rng.choice(np.arange(grid[0] - 180, grid[-1] + 240, 60.0), rng.integers(0, 8), replace=False)
        )
        stamps.append(times + rng.normal(0, 3, len(times)))  # jitter rounds to the nearest step
        values.append(np.where(rng.random(len(times)) < 0.1, np.inf, rng.normal(size=len(times))))
        offsets.append(offsets[-1] + len(times))
    flat = lambda parts: np.concatenate(parts) if parts else np.zeros(0)  # noqa: E731
    return Answer(keys, flat(stamps), flat(values), np.array(offsets, dtype=np.int64))


def loop_align(per_signal, signals, grid, max_targets, include):
    keys = sorted({k for a in per_signal.values() for k in a.keys if k is not None} | set(include))[
        :max_targets
    ]
    row = {key: i for i, key in enumerate(keys)}
    out = np.full((len(keys), len(grid), len(signals)), np.nan)
    duplicated = set()
    for column, signal in enumerate(signals):
        answer, seen = per_signal[signal], set()
        for i, key in enumerate(answer.keys):
            if key is None or key not in row:
                continue
            if row[key] in seen:
                duplicated.add(signal)
                continue
            seen.add(row[key])
            part = slice(answer.offsets[i], answer.offsets[i + 1])
            for t, v in zip(answer.timestamps[part], answer.values[part], strict=True):
                slot = round((t - grid[0]) / 60.0)
                if 0 <= slot < len(grid):
                    out[row[key], slot, column] = v if np.isfinite(v) else np.nan
    return out, keys, duplicated


def test_align_equals_a_loop_over_series() -> None:
    rng = np.random.default_rng(7)
    grid = 1_700_000_000.0 + 60.0 * np.arange(10)
    for _ in range(200):
        per_signal = {signal: random_answer(rng, grid) for signal in ("cpu", "memory")}
        include = [(f"pod-{i}",) for i in rng.integers(0, 15, rng.integers(0, 3))]
        limit = int(rng.integers(1, 16))
        got = align(per_signal, ("cpu", "memory"), grid, limit, include)
        want = loop_align(per_signal, ("cpu", "memory"), grid, limit, include)
        assert got[1] == want[1]
        assert got[2] == want[2]
        np.testing.assert_array_equal(got[0], want[0])
