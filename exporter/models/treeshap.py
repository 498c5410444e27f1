"""Exact TreeSHAP for small boosted trees, as table lookups over rows x leaves (compiled loops).

XGBoost's own ``pred_contribs`` walks every path per row in C++ and costs ~0.75 ms per row
here, plus ~1 ms of fixed cost per call (DMatrix, threads): a single API answer could not be
fast and a batch of 1,000 took most of a second. The trees are small (depth 4: at most 4
distinct features on a path), so each leaf's share of every Shapley value depends on the row
only through which of its path conditions the row meets: 2**4 cases, tabled once at load.

For a leaf with value v and distinct path features P (m of them), a row meets feature j's
conditions or not (o_j in {0, 1}; a missing value follows XGBoost's default direction), and
z_j is the fraction of the training cover that went the path's way at j's splits. TreeSHAP's
path-dependent expectation gives the leaf's part of feature i's value as

    v * (o_i - z_i) * sum over S in P - {i} with o_j = 1 for j in S of
        |S|! (m - |S| - 1)! / m! * prod over j in P - S - {i} of z_j

(Lundberg et al., 2020, Algorithm 2, summed over subsets instead of grown along the path;
repeated features on a path merge into one condition and one fraction, as its unwind does).
The bias is the cover-weighted mean leaf value plus the base margin, so each row's values sum
to XGBoost's margin. Inputs are compared as float32 (``x < split`` goes left), as XGBoost does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from exporter.kernels import by_rows, heap_leaf_sums, leaf_shap

MAX_PATH_FEATURES = 6  # tables grow as 2**m per leaf; the shipped trees need 4


class TreeShapError(ValueError):
    """A model this module cannot explain (categorical splits, deep paths, other objectives) or
    that is not a valid XGBoost tree model at all."""


@dataclass(frozen=True, eq=False)
class TreeShap:
    """Per leaf (all trees): its path features padded to ``width`` and the interval each must
    lie in; ``table[leaf, k, met]`` is its part of the k-th path feature's value when ``met``
    is the bit set of conditions the row meets."""

    n_features: int
    width: int
    feature: np.ndarray  # [leaves, width] int: the path's k-th distinct feature (0 for padding)
    low: np.ndarray  # [leaves, width] float32: met when low <= x < high
    high: np.ndarray
    missing: np.ndarray  # [leaves, width] bool: a missing value meets the condition
    size: np.ndarray  # [leaves] int64: how many of the width path features are real (the rest pad)
    table: np.ndarray  # [leaves, width, 2**width] float32: half the cache lines of float64
    base: float  # the booster's base margin
    bias: float  # expected margin: cover-weighted mean leaf value plus the base
    heap: HeapTrees  # the same trees for the margin: a walk per tree instead of every leaf's test

    @classmethod
    def from_model(cls, model: Any) -> TreeShap:
        """From XGBoost's model document (``ubjson.loads`` of a ``.ubj`` file, or
        ``json.loads(booster.save_raw("json"))``), checked so a hostile file cannot loop or
        allocate without bound."""
        try:
            base, n_features, trees = _checked_model(model)
        except TreeShapError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise TreeShapError(f"not an XGBoost tree model ({type(exc).__name__}: {exc})") from None
        leaves = [leaf for tree in trees for leaf in _leaf_paths(tree)]
        width = max(1, max(len(path) for _, _, path in leaves))
        if width > MAX_PATH_FEATURES:
            raise TreeShapError(f"paths use up to {width} distinct features; at most {MAX_PATH_FEATURES}")
        count = len(leaves)
        feature = np.zeros((count, width), np.intp)
        low = np.full((count, width), -np.inf, np.float32)
        high = np.full((count, width), np.inf, np.float32)
        missing = np.ones((count, width), bool)
        value = np.array([leaf_value for leaf_value, _, _ in leaves])
        sizes = np.array([len(path) for _, _, path in leaves])
        zeros = np.ones((count, width))
        for index, (_, _, path) in enumerate(leaves):
            for k, (j, (lo, hi, miss, z)) in enumerate(path.items()):
                feature[index, k], low[index, k], high[index, k], missing[index, k] = j, lo, hi, miss
                zeros[index, k] = z
        table = np.zeros((count, 1 << width, width))
        for m in np.unique(sizes):
            group = sizes == m
            table[group] = _leaf_tables(value[group], zeros[group, :m], width)
        expected = float(value @ np.array([cover for _, cover, _ in leaves]))
        return cls(
            n_features=n_features,
            width=width,
            feature=feature,
            low=low,
            high=high,
            missing=missing,
            size=sizes.astype(np.int64),
            table=np.ascontiguousarray(table.transpose(0, 2, 1), dtype=np.float32),
            base=base,
            bias=expected + base,
            heap=HeapTrees.of(trees),
        )

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """SHAP values ``[rows, features + 1]`` on the margin, the last column the bias."""
        out = leaf_shap(
            self._float32(X),
            self.feature,
            self.low,
            self.high,
            self.missing,
            self.size,
            self.table,
            self.n_features,
            self.bias,
        )
        # Rounded to float32 as XGBoost's own are: sums of them in float64 (margins, per-signal
        # shares) then come out the same whatever the batch a row was scored in.
        return out.astype(np.float32).astype(np.float64)

    def margin(self, X: np.ndarray) -> np.ndarray:
        """XGBoost's raw margin: the values of the leaves each row reaches, plus the base."""
        heap = self.heap
        return self.base + by_rows(
            heap_leaf_sums,
            self._float32(X),
            heap.feature,
            heap.threshold,
            heap.default_left,
            heap.value,
            heap.depth,
        )

    def _float32(self, X: np.ndarray) -> np.ndarray:
        """Rows as the trees compare them: float32 (XGBoost refuses infinities; here they are
        missing values like NaN)."""
        if np.ndim(X) != 2 or np.shape(X)[1] != self.n_features:
            raise TreeShapError(f"the trees take rows of {self.n_features} features, got shape {np.shape(X)}")
        with np.errstate(over="ignore"):
            return np.ascontiguousarray(X, dtype=np.float32)


@dataclass(frozen=True)
class HeapTrees:
    """Every tree padded to a complete binary tree of ``depth`` levels in heap order (1-based:
    node i has children 2i and 2i + 1), so a walk is one compare and one shift per level.
    A leaf above the last level sends every row left (threshold +inf, missing left) down to
    copies of its value."""

    depth: int
    feature: np.ndarray  # [trees * (2**depth - 1)] int32; tree t's heap node i at t * width + i - 1
    threshold: np.ndarray  # float32: x < threshold goes left
    default_left: np.ndarray  # bool: where a missing value goes
    value: np.ndarray  # [trees * 2**depth] the leaf value each last-level position copies

    @classmethod
    def of(cls, trees: list[dict]) -> HeapTrees:
        depth = max(_tree_depth(tree) for tree in trees)
        width = (1 << depth) - 1
        feature = np.zeros((len(trees), width), np.int32)
        threshold = np.full((len(trees), width), np.inf, np.float32)
        default_left = np.ones((len(trees), width), bool)
        value = np.zeros((len(trees), 1 << depth))
        for t, tree in enumerate(trees):
            left, right = tree["left_children"], tree["right_children"]
            stack = [(0, 1)]  # (xgboost node, heap position)
            while stack:
                node, at = stack.pop()
                if left[node] == -1:
                    level = at.bit_length() - 1  # copies of the leaf fill its subtree's last level
                    first = (at << (depth - level)) - (1 << depth)
                    value[t, first : first + (1 << (depth - level))] = tree["split_conditions"][node]
                    continue
                feature[t, at - 1] = tree["split_indices"][node]
                threshold[t, at - 1] = np.float32(tree["split_conditions"][node])
                default_left[t, at - 1] = bool(tree["default_left"][node])
                stack += [(left[node], 2 * at), (right[node], 2 * at + 1)]
        return cls(depth, feature.ravel(), threshold.ravel(), default_left.ravel(), value.ravel())


def _checked_model(model: Any) -> tuple[float, int, list[dict]]:
    """The base margin, feature count and trees of a binary tree model; raises on anything else."""
    learner = model["learner"]
    objective = learner["objective"]["name"]
    if objective not in ("binary:logistic", "binary:logitraw", "reg:squarederror"):
        raise TreeShapError(f"objective {objective} is not supported")
    parameters = learner["learner_model_param"]
    base = float(str(parameters["base_score"]).strip("[]"))
    if objective == "binary:logistic":
        base = math.log(base / (1.0 - base))
    n_features = int(parameters["num_feature"])
    trees = [_checked_tree(tree, n_features) for tree in learner["gradient_booster"]["model"]["trees"]]
    if not trees or not math.isfinite(base) or n_features < 1:
        raise ValueError("no trees, or a base score or feature count out of range")
    return base, n_features, trees


def _checked_tree(tree: dict, n_features: int) -> dict:
    """A tree whose arrays agree in length and whose children come after their parent (as
    XGBoost numbers them), so every walk ends; split features within ``n_features``."""
    left = np.asarray(tree["left_children"], dtype=np.int64)
    right = np.asarray(tree["right_children"], dtype=np.int64)
    nodes = np.arange(len(left))
    arrays = {name: np.asarray(tree[name]) for name in _TREE_ARRAYS}
    if not len(left) or any(array.shape != left.shape for array in (right, *arrays.values())):
        raise ValueError("a tree's node arrays differ in length")
    leaf = left == -1
    inner = ~leaf
    children = np.concatenate([left[inner], right[inner]])
    parents = np.concatenate([nodes[inner], nodes[inner]])
    if np.any(leaf != (right == -1)) or np.any((children <= parents) | (children >= len(left))):
        raise ValueError("a tree's children do not follow their parent")
    split = arrays["split_indices"].astype(np.int64)
    if np.any((split[inner] < 0) | (split[inner] >= n_features)):
        raise ValueError(f"a split uses a feature outside 0..{n_features - 1}")
    if not np.isfinite(arrays["split_conditions"].astype(np.float64)).all() or np.any(
        arrays["sum_hessian"] <= 0
    ):
        raise ValueError("split values must be finite and covers positive")
    return {"left_children": left, "right_children": right, **arrays, "split_indices": split}


_TREE_ARRAYS = ("split_indices", "split_conditions", "split_type", "default_left", "sum_hessian")


def _tree_depth(tree: dict) -> int:
    left, right = tree["left_children"], tree["right_children"]
    deepest, stack = 0, [(0, 0)]
    while stack:
        node, level = stack.pop()
        if left[node] == -1:
            deepest = max(deepest, level)
        else:
            stack += [(left[node], level + 1), (right[node], level + 1)]
    if deepest > MAX_PATH_FEATURES * 2:
        raise TreeShapError(f"trees {deepest} levels deep are not supported")
    return deepest


def _leaf_paths(tree: dict) -> list[tuple[float, float, dict[int, tuple[float, float, bool, float]]]]:
    """(leaf value, share of the root's cover, {feature: (low, high, missing meets, z)}) per leaf."""
    left, right = tree["left_children"], tree["right_children"]
    split, condition = tree["split_indices"], tree["split_conditions"]
    default_left, cover = tree["default_left"], tree["sum_hessian"]
    if any(tree["split_type"]):
        raise TreeShapError("categorical splits are not supported")
    out = []
    stack: list[tuple[int, dict]] = [(0, {})]
    while stack:
        node, path = stack.pop()
        if left[node] == -1:
            out.append((float(condition[node]), cover[node] / cover[0], path))
            continue
        j, c = split[node], np.float32(condition[node])
        for child, goes_left in ((left[node], True), (right[node], False)):
            lo, hi, miss, z = path.get(j, (-np.inf, np.inf, True, 1.0))
            lo, hi = (lo, min(hi, c)) if goes_left else (max(lo, c), hi)
            entry = (lo, hi, miss and bool(default_left[node]) == goes_left, z * cover[child] / cover[node])
            stack.append((child, path | {j: entry}))
    return out


def _leaf_tables(values: np.ndarray, zeros: np.ndarray, width: int) -> np.ndarray:
    """[leaves, 2**width, width]: each leaf's part of its k-th path feature's value for each met
    set, for leaves with the same number m of path features (``zeros`` is [leaves, m])."""
    count, m = zeros.shape
    masks = np.arange(1 << m)
    bits = (masks[:, None] >> np.arange(m)) & 1  # [2**m, m]
    # prod over the features in mask c of z: [leaves, 2**m]
    prods = np.prod(np.where(bits[None].astype(bool), zeros[:, None, :], 1.0), axis=2)
    sizes = bits.sum(axis=1)
    weight = np.array([math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m) for s in range(m)])
    contained = (masks[:, None] & ~masks[None, :]) == 0  # [s, met]: subset s lies within met
    table = np.zeros((count, 1 << width, width))
    full = (1 << m) - 1
    for k in range(m):
        subsets = masks[(masks >> k) & 1 == 0]  # S without k
        coefficient = weight[sizes[subsets]] * prods[:, full & ~subsets & ~(1 << k)]  # [leaves, S]
        total = coefficient @ contained[subsets].astype(float)  # [leaves, met]
        part = values[:, None] * (bits[None, :, k] - zeros[:, k : k + 1]) * total
        # Padding bits (always met) do not change a leaf's parts: repeat over them.
        table[:, :, k] = np.tile(part, (1, 1 << (width - m)))
    return table
