"""An Isolation Forest as plain arrays: saved as data, scored over rows x trees in numpy.

Two reasons not to keep scikit-learn's estimator at serving time:

- **Loading is data, never code.** The estimator only persists as a pickle, and unpickling a
  file runs whatever the file says. An ``ArrayForest`` is five integer/float arrays per tree;
  ``load`` reads them with ``allow_pickle=False`` and checks every index before use.
- **Cost is O(rows) with a small constant.** ``decision_function`` validates input and walks
  each tree in a separate call (100 calls of fixed cost per forest); here every tree is laid out
  as a complete binary tree of the forest's depth, so a walk is one compare and one shift per
  level with no branch to mispredict, in one compiled loop over rows x trees
  (``kernels.heap_path_sums``).

Scores are exactly scikit-learn's: a row's path length in a tree is the depth of the leaf it
reaches plus ``c(n)``, the average path length of an unbuilt tree over the leaf's ``n``
training samples; ``score = 2 ** (-mean path / c(max_samples))``. ``decision_function`` follows
pyod's convention (larger is more anomalous): ``score + offset`` with sklearn's ``offset_``.
Like sklearn, inputs are compared as float32 (``x <= threshold`` goes left). Inputs must be
finite (callers impute): a NaN is not scored as sklearn would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporter.kernels import by_rows, heap_path_sums

MAX_DEPTH = 16  # sklearn grows depth ceil(log2(max_samples)); 16 serves max_samples up to 65,536
FIELDS = ("feature", "threshold", "left", "right", "samples")
LEAF = -1


class ForestError(ValueError):
    """Arrays that do not describe a forest this module can score; the message says which."""


def average_path_length(samples: np.ndarray) -> np.ndarray:
    """c(n): average path length of an unsuccessful search in a binary search tree of n keys."""
    n = np.asarray(samples, dtype=np.float64)
    out = np.where(n == 2, 1.0, 0.0)
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


@dataclass(frozen=True, eq=False)
class ArrayForest:
    """Trees as padded ``[trees, nodes]`` arrays (sklearn's node order; ``left == -1`` marks a
    leaf, padding is leaves) and the two scalars of the score: ``offset`` and ``max_samples``."""

    feature: np.ndarray  # int64: the column a node splits on (ignored at leaves)
    threshold: np.ndarray  # float64: rows with x <= threshold go left
    left: np.ndarray  # int64: child node index, -1 at leaves
    right: np.ndarray  # int64
    samples: np.ndarray  # int64: training samples that reached the node (used at leaves)
    n_features: int
    max_samples: int
    offset: float

    def __post_init__(self) -> None:
        self._check()
        object.__setattr__(self, "_layout", _complete_layout(self))

    @classmethod
    def from_sklearn(cls, forest: Any) -> ArrayForest:
        """Copy a fitted ``sklearn.ensemble.IsolationForest`` (pyod's ``IForest.detector_``)."""
        trees = [estimator.tree_ for estimator in forest.estimators_]
        nodes = max(tree.node_count for tree in trees)
        arrays = {
            "feature": np.zeros((len(trees), nodes), np.int64),
            "threshold": np.zeros((len(trees), nodes)),
            "left": np.full((len(trees), nodes), LEAF, np.int64),
            "right": np.full((len(trees), nodes), LEAF, np.int64),
            "samples": np.ones((len(trees), nodes), np.int64),
        }
        subsampled = forest._max_features != forest.n_features_in_
        for t, (tree, columns) in enumerate(zip(trees, forest.estimators_features_, strict=True)):
            count = tree.node_count
            leaf = tree.children_left == LEAF
            feature = np.where(leaf, 0, tree.feature)
            arrays["feature"][t, :count] = np.asarray(columns)[feature] if subsampled else feature
            arrays["threshold"][t, :count] = np.where(leaf, 0.0, tree.threshold)
            arrays["left"][t, :count] = tree.children_left
            arrays["right"][t, :count] = tree.children_right
            arrays["samples"][t, :count] = tree.n_node_samples
        return cls(
            **arrays,
            n_features=int(forest.n_features_in_),
            max_samples=int(forest._max_samples),
            offset=float(forest.offset_),
        )

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Everything the forest is, as named arrays (for ``np.savez``)."""
        scalars = {
            "n_features": np.int64(self.n_features),
            "max_samples": np.int64(self.max_samples),
            "offset": np.float64(self.offset),
        }
        fields = {name: getattr(self, name) for name in FIELDS}
        return {prefix + name: np.asarray(value) for name, value in (fields | scalars).items()}

    @classmethod
    def from_arrays(cls, arrays: Any, prefix: str = "") -> ArrayForest:
        """The inverse of ``to_arrays``; raise ForestError for anything that is not a forest."""
        try:
            fields = {name: np.asarray(arrays[prefix + name]) for name in FIELDS}
            scalars = {
                name: np.asarray(arrays[prefix + name]) for name in ("n_features", "max_samples", "offset")
            }
        except KeyError as exc:
            raise ForestError(f"no array {exc.args[0]!r}") from None
        for name, value in (fields | scalars).items():
            wanted = np.floating if name in ("threshold", "offset") else np.integer
            if not np.issubdtype(value.dtype, wanted):
                raise ForestError(f"{name} has dtype {value.dtype}, expected {wanted.__name__}")
        for name, value in scalars.items():
            if value.shape != ():
                raise ForestError(f"{name} must be a scalar, has shape {value.shape}")
        return cls(
            feature=fields["feature"].astype(np.int64),
            threshold=fields["threshold"].astype(np.float64),
            left=fields["left"].astype(np.int64),
            right=fields["right"].astype(np.int64),
            samples=fields["samples"].astype(np.int64),
            n_features=int(scalars["n_features"]),
            max_samples=int(scalars["max_samples"]),
            offset=float(scalars["offset"]),
        )

    def save(self, path: str | Path) -> None:
        with Path(path).open("wb") as handle:
            np.savez(handle, **self.to_arrays())

    @classmethod
    def load(cls, path: str | Path) -> ArrayForest:
        with np.load(path, allow_pickle=False) as arrays:
            return cls.from_arrays(arrays)

    @property
    def n_trees(self) -> int:
        return len(self.feature)

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """sklearn's ``IsolationForest.score_samples``: ``-2 ** (-mean path / c(max_samples))``."""
        return -self._isolation(X)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """pyod's ``IForest.decision_function``: larger is more anomalous, 0 near the training
        contamination quantile."""
        return self._isolation(X) + self.offset

    def _isolation(self, X: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # beyond float32's range is +-inf, as in sklearn
            X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ForestError(f"expected rows of {self.n_features} features, got shape {X.shape}")
        denominator = self.n_trees * float(average_path_length(self.max_samples))
        paths = self._layout.path_sums(X)
        if denominator == 0:  # one training sample: every path is 0; sklearn takes 0/0 as 1
            return np.full(len(X), 0.5)
        return 2.0 ** (-paths / denominator)

    def _check(self) -> None:
        shape = self.feature.shape
        if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
            raise ForestError(f"feature must be a non-empty [trees, nodes] array, has shape {shape}")
        for name in FIELDS:
            if getattr(self, name).shape != shape:
                raise ForestError(f"{name} has shape {getattr(self, name).shape}, feature has {shape}")
        if self.n_features < 1 or self.max_samples < 1 or not np.isfinite(self.offset):
            raise ForestError(
                f"bad scalars: n_features {self.n_features}, max_samples {self.max_samples}, offset {self.offset}"
            )
        leaf = self.left == LEAF
        internal = ~leaf
        index = np.arange(shape[1])
        # Children after their parent: every walk ends, within MAX_DEPTH checked by the layout.
        for name in ("left", "right"):
            child = getattr(self, name)
            if (internal & ((child <= index) | (child >= shape[1]))).any():
                raise ForestError(f"{name} children must point forward inside the tree")
        if (leaf & (self.right != LEAF)).any():
            raise ForestError("a node has a left child but no right child, or the reverse")
        if (internal & ((self.feature < 0) | (self.feature >= self.n_features))).any():
            raise ForestError(f"split features must lie in [0, {self.n_features})")
        if not np.isfinite(self.threshold[internal]).all():
            raise ForestError("split thresholds must be finite")
        if (leaf & (self.samples < 1)).any():
            raise ForestError("every leaf needs at least one training sample")


@dataclass(frozen=True)
class _Layout:
    """Each tree padded to a complete binary tree of ``depth`` levels in heap order (node i has
    children 2i+1, 2i+2; ``path_sums`` walks it 1-based), so a walk needs no child lookups: one arithmetic step per level.
    A leaf above the last level sends rows left (threshold +inf) down to copies of itself."""

    depth: int
    feature: np.ndarray  # [trees * (2**depth - 1)] flat, tree t's internal node i at t * width + i
    threshold: np.ndarray  # float32: the largest float32 <= sklearn's float64 threshold
    path: np.ndarray  # [trees * 2**depth] leaf depth + c(samples) at the last level

    def path_sums(self, X: np.ndarray) -> np.ndarray:
        """Sum over trees of the path length of each row of float32 ``X``."""
        return by_rows(heap_path_sums, X, self.feature, self.threshold, self.path, self.depth)


def _complete_layout(forest: ArrayForest) -> _Layout:
    trees = forest.n_trees
    rows = np.arange(trees)
    current = np.zeros((trees, 1), dtype=np.int64)  # sklearn node id at each heap position of a level
    depth_of = np.zeros((trees, 1), dtype=np.int64)  # depth of the leaf a padded position copies
    features, thresholds = [], []
    for level in range(MAX_DEPTH + 1):
        leaf = forest.left[rows[:, None], current] == LEAF
        if leaf.all():
            break
        if level == MAX_DEPTH:
            raise ForestError(f"trees deeper than {MAX_DEPTH} levels are not supported")
        depth_of = np.where(leaf, depth_of, level + 1)
        features.append(np.where(leaf, 0, forest.feature[rows[:, None], current]))
        thresholds.append(np.where(leaf, np.inf, forest.threshold[rows[:, None], current]))
        left = np.where(leaf, current, forest.left[rows[:, None], current])
        right = np.where(leaf, current, forest.right[rows[:, None], current])
        current = np.stack([left, right], axis=2).reshape(trees, -1)
        depth_of = np.repeat(depth_of, 2, axis=1)
    depth = len(features)
    leaf_depth = depth_of if depth else np.zeros((trees, 1), dtype=np.int64)
    path = leaf_depth + average_path_length(forest.samples[rows[:, None], current])
    threshold = np.concatenate(thresholds, axis=1) if depth else np.zeros((trees, 0))
    return _Layout(
        depth=depth,
        feature=(np.concatenate(features, axis=1) if depth else np.zeros((trees, 0), np.int64))
        .astype(np.int32)
        .ravel(),
        threshold=_float32_floor(threshold).ravel(),
        path=path.ravel(),
    )


def _float32_floor(x: np.ndarray) -> np.ndarray:
    """The largest float32 <= x: for float32 inputs ``v <= x`` iff ``v <= floor32(x)``."""
    rounded = x.astype(np.float32)
    return np.where(rounded > x, np.nextafter(rounded, np.float32(-np.inf)), rounded).astype(np.float32)
