"""Isolation Forest scoring: scikit-learn/pyod's ``decision_function`` vs our ArrayForest.

    python benchmarks/forest.py [--rows 1 1000 10000] [--repeats 7]

Both forests are the same fitted model (100 trees, 256 samples): the bundle forest over
the shipped model's window features, and the anomaly normaliser's null forest over
60-step windows, which a cycle scores once per target and signal (4 rows per target).
Scores are checked equal (1e-9) and the best of ``--repeats`` times is printed, all in
one run on the same machine, so only the ratios mean anything; the machine is shared
and noisy.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from pyod.models.iforest import IForest

from exporter.config import BOOTSTRAP_MODEL
from exporter.models.bundle import load_bundle
from exporter.models.forest import ArrayForest
from exporter.models.normalize import EMBED_STEPS, NULL_ROWS, SEED


def best(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def forests(features: int) -> dict[str, tuple[IForest, int]]:
    """name -> (fitted pyod forest, input rows per target)."""
    rng = np.random.default_rng(SEED)
    bundle = IForest(n_estimators=100, max_samples=256, random_state=SEED).fit(
        rng.standard_normal((NULL_ROWS, features))
    )
    null = IForest(n_estimators=100, max_samples=256, random_state=SEED).fit(
        rng.standard_normal((NULL_ROWS, EMBED_STEPS))
    )
    return {
        f"bundle forest ({features} features)": (bundle, 1),
        f"null forest ({EMBED_STEPS} steps)": (null, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", type=int, nargs="+", default=[1, 1000, 10000])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    features = len(load_bundle(BOOTSTRAP_MODEL).manifest.features)
    rng = np.random.default_rng(1)
    print(f"{'forest':<28} {'targets':>7} {'rows':>7} {'sklearn/pyod':>13} {'ArrayForest':>12} {'ratio':>7}")
    for name, (fitted, per_target) in forests(features).items():
        arrays = ArrayForest.from_sklearn(fitted.detector_)
        for targets in args.targets:
            X = rng.standard_normal((targets * per_target, fitted.detector_.n_features_in_)) * 1.5
            difference = np.abs(arrays.decision_function(X) - fitted.decision_function(X)).max()
            if difference > 1e-9:
                raise SystemExit(f"{name}: scores differ by {difference}")
            ours = best(lambda X=X, arrays=arrays: arrays.decision_function(X), args.repeats)
            theirs = best(lambda X=X, fitted=fitted: fitted.decision_function(X), args.repeats)
            print(
                f"{name:<28} {targets:>7,} {len(X):>7,} {theirs * 1000:>11.2f}ms {ours * 1000:>10.2f}ms "
                f"{theirs / ours:>6.1f}x"
            )


if __name__ == "__main__":
    main()
