"""IsolationForest baselines: fit with scikit-learn, score with a flattened forest.

Why flatten: ``IsolationForest.score_samples`` walks its trees one by one through Python with a
fixed cost of milliseconds per call, which dominates at micro-batch sizes. ``FlatForest`` copies
the fitted trees into a few NumPy arrays (children of a node side by side, leaves pointing at
themselves) and walks every tree for every row at once, one tree level per step. It gives the
same scores as ``score_samples`` (tested to 1e-9).

``ForestModel`` is one fitted baseline (per agent or per agent group): the forest, the alert
threshold calibrated to a target alert rate on its training rows, and per-feature baselines
(median, spread) used to explain a score. Its state is the training sample plus the parameters,
and ``from_dict`` refits deterministically (fixed ``random_state``): no pickle, ever.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .array_codec import decode_matrix, encode_matrix
from .forest_walk import bank_paths
from .pyround import py_round

if TYPE_CHECKING:  # scikit-learn takes ~3 s to import: only fitting needs it, so import it there
    from sklearn.ensemble import IsolationForest

__all__ = ["NODE", "BANK_NODE", "ForestParams", "FlatForest", "ForestBank", "ForestModel", "SlotConstants", "average_path_length",
           "explain_many"]


def average_path_length(n: np.ndarray) -> np.ndarray:
    """Expected path length of an unsuccessful BST search among ``n`` points (Liu et al. 2008)."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


NODE = np.dtype([("child", np.int64), ("feature", np.int32), ("threshold", np.float32)])
"""One tree node as a 16-byte record: the walk gathers a node once per level (one cache line)
instead of three arrays (three cache misses on a bank far larger than the cache). ``child`` is
the left child (the right one is next to it; a leaf points at itself), ``threshold`` the float32
floor of sklearn's (``_float32_floor``; ``inf`` at leaves, so a row never moves on)."""

BANK_NODE = np.dtype([("rel", np.int16), ("feature", np.int16), ("threshold", np.float32)])
"""A ``NODE`` as ``ForestBank`` holds it, in 8 bytes: ``rel`` is the left child's offset from the
node itself (0 at a leaf), so it does not depend on the slot. With a bank of ~200 models far
larger than the CPU's L2, the walk waits on node fetches; half the bytes per node made NumPy's
walk ~10 % cheaper there (the same leaves). Laying each tree out in cache-line blocks
of two levels as well gained nothing measurable on top, so slots keep the forest's order."""
REL_MAX = int(np.iinfo(np.int16).max)


class FlatForest:
    """A fitted ``IsolationForest`` as flat arrays, scored level by level for all trees at once."""

    def __init__(self, forest: IsolationForest) -> None:
        subsample = forest._max_features != forest.n_features_in_
        fmaps = [np.asarray(f) if subsample else None for f in forest.estimators_features_]
        self.nodes, self.leaf_value, self.roots, self.depth = _flatten_forest([e.tree_ for e in forest.estimators_],
                                                                              fmaps)
        self.n_features = int(forest.n_features_in_)
        self.denominator = len(forest.estimators_) * float(average_path_length(np.array([forest._max_samples]))[0])

    @classmethod
    def from_arrays(cls, nodes: np.ndarray, leaf_value: np.ndarray, roots: np.ndarray, depth: int, n_features: int,
                    denominator: float) -> "FlatForest":
        """A forest flattened elsewhere (the refit worker process), from its plain arrays: no sklearn
        object crosses the process boundary, so nothing is ever unpickled."""
        self = cls.__new__(cls)
        self.nodes = np.ascontiguousarray(nodes, dtype=NODE)
        self.leaf_value = np.ascontiguousarray(leaf_value, dtype=np.float64)
        self.roots = np.ascontiguousarray(roots, dtype=np.intp)
        self.depth = int(depth)
        self.n_features = int(n_features)
        self.denominator = float(denominator)
        n = len(self.nodes)
        if (len(self.leaf_value) != n or self.roots.ndim != 1 or not len(self.roots) or self.depth < 0
                or (n and (self.nodes["child"].min() < 0 or self.nodes["child"].max() >= n
                           or self.nodes["feature"].min() < 0 or self.nodes["feature"].max() >= self.n_features))
                or self.roots.min() < 0 or self.roots.max() >= n):
            raise ValueError("inconsistent flattened forest arrays")  # _walk's take(mode="clip") trusts them
        return self

    def score_samples(self, X: np.ndarray, chunk: int = 256) -> np.ndarray:
        """Same as ``IsolationForest.score_samples``: the opposite of the anomaly score (lower = more abnormal)."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got shape {X.shape}")
        out = np.empty(len(X))
        for lo in range(0, len(X), chunk):
            out[lo : lo + chunk] = self._depths(X[lo : lo + chunk])
        if self.denominator == 0:
            return -np.ones(len(X))
        return -np.exp2(-out / self.denominator)

    def _depths(self, X: np.ndarray) -> np.ndarray:
        """Sum over trees of each row's path length (plus the leaf's expected remainder)."""
        n, F = X.shape
        T = len(self.roots)
        flat = X.ravel()
        rows = np.tile(np.arange(n, dtype=np.intp) * F, T)
        idx = np.repeat(self.roots, n)
        return _walk(self.nodes, self.leaf_value, flat, rows, idx, self.depth).reshape(T, n).sum(axis=0)


class ForestBank:
    """Many ``FlatForest``s with the same number of trees in one set of arrays, one fixed-size slot
    each, so one level-by-level walk scores the rows of every model in a micro-batch: with a model
    per agent, a batch has a few rows per model and per-model passes would cost mostly NumPy call
    overhead. A refitted model overwrites its slot in place (no rebuild of the bank)."""

    def __init__(self, n_trees: int, slot_nodes: int, n_features: int) -> None:
        self.n_trees = n_trees
        self.slot_nodes = slot_nodes
        self.n_features = n_features
        self.nodes = np.zeros(0, dtype=BANK_NODE)
        self.leaf_value = np.zeros(0)
        self.roots = np.zeros((n_trees, 0), dtype=np.intp)
        """``roots[t, slot]``: the root of tree ``t`` of the slot's forest."""
        self.depth = np.zeros(0, dtype=np.intp)
        self.rest_min = np.zeros((0, n_trees + 1))
        """Per slot, ``rest_min[slot, t]``: the least the slot's trees ``t..`` can add to a row's
        summed path length (sum of each tree's smallest reachable leaf value; ``-inf`` when
        unknown): ``path_lengths_bounded``'s bound."""
        self._slot: dict[int, int] = {}
        """``id`` of a FlatForest -> its slot; with ``_held`` so ids are not reused while held."""
        self._held: dict[int, FlatForest] = {}
        self._free: list[int] = []

    def fits(self, flat: FlatForest) -> bool:
        """Whether ``flat`` can take a slot: as many trees, few enough nodes, the same features,
        and ``BANK_NODE``'s 16-bit fields hold its child offsets and features (trees of a few
        thousand nodes; a forest that does not fit is scored on its own)."""
        if not (len(flat.roots) == self.n_trees and len(flat.nodes) <= self.slot_nodes
                and flat.n_features == self.n_features):
            return False
        rel = flat.nodes["child"] - np.arange(len(flat.nodes))
        return not len(rel) or (int(np.abs(rel).max()) <= REL_MAX and flat.n_features <= REL_MAX + 1)

    def sync(self, flats: list[FlatForest]) -> list[int]:
        """Slots of these forests (each must ``fit``), loading new ones; forests not listed are dropped."""
        wanted = {id(f) for f in flats}
        for fid in [fid for fid in self._slot if fid not in wanted]:
            self._free.append(self._slot.pop(fid))
            del self._held[fid]
        return [self._slot.get(id(f)) if id(f) in self._slot else self._load(f) for f in flats]

    def _load(self, flat: FlatForest) -> int:
        if not self._free:
            self._grow(max(4, len(self.depth)))
        slot = self._free.pop()
        lo = slot * self.slot_nodes
        n = len(flat.nodes)
        at = self.nodes[lo : lo + n]
        at["rel"] = flat.nodes["child"] - np.arange(n)
        at["feature"] = flat.nodes["feature"]
        at["threshold"] = flat.nodes["threshold"]
        self.leaf_value[lo : lo + n] = flat.leaf_value
        self.roots[:, slot] = flat.roots + lo
        self.depth[slot] = flat.depth
        least = _least_leaf_per_tree(flat)
        self.rest_min[slot, :-1] = np.cumsum(least[::-1])[::-1]
        self.rest_min[slot, -1] = 0.0
        self._slot[id(flat)] = slot
        self._held[id(flat)] = flat
        return slot

    def _grow(self, extra: int) -> None:
        old = len(self.depth)
        n_old, n = old * self.slot_nodes, (old + extra) * self.slot_nodes
        nodes = np.empty(n, dtype=BANK_NODE)
        nodes[:n_old] = self.nodes
        nodes[n_old:] = _UNUSED
        self.nodes = nodes
        leaf_value = np.zeros(n)
        leaf_value[:n_old] = self.leaf_value
        self.leaf_value = leaf_value
        self.roots = np.concatenate([self.roots, np.zeros((self.n_trees, extra), dtype=np.intp)], axis=1)
        self.depth = np.concatenate([self.depth, np.zeros(extra, dtype=np.intp)])
        self.rest_min = np.concatenate([self.rest_min, np.full((extra, self.n_trees + 1), -np.inf)])
        self._free.extend(range(old + extra - 1, old - 1, -1))

    def path_lengths(self, X: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Per row, the sum over its model's trees of the path length (``FlatForest._depths``),
        row ``i`` walking the forest in slot ``slots[i]``."""
        return self.path_lengths_bounded(X, slots, np.full(len(X), np.inf), ())

    def path_lengths_bounded(self, X: np.ndarray, slots: np.ndarray, limit: np.ndarray,
                             stops: Sequence[float] = (0.4, 0.6, 0.75, 0.9)) -> np.ndarray:
        """``path_lengths``, except that a row whose sum is proven above ``limit[i]`` is not walked
        further and gets NaN: the detector's ``observe`` needs exact sums only of rows that can be
        hits (a hit needs a short path), and most rows are proven clean part-way through the trees.

        A row's sum so far is checked after the trees up to each of ``stops`` (shares of the trees;
        on the fleet bench a clean row's path needs over half its trees to pass a hit's, the least a
        tree adds being about a third of a typical path): that sum plus ``rest_min`` (the least its
        remaining trees can add) is a lower bound of its full sum. Rows walked to the end get the
        exact sum (``forest_walk.bank_paths``, compiled). The limit must leave room for rounding:
        the bound adds ``rest_min`` in another order."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got shape {X.shape}")
        slots = np.asarray(slots)
        if len(slots) != len(X) or len(limit) != len(X) or (
                len(slots) and (int(slots.min()) < 0 or int(slots.max()) >= len(self.depth))):
            raise ValueError(f"need one slot in [0, {len(self.depth)}) and one limit per row")  # the walk trusts them
        T = self.n_trees
        at = np.array(sorted({int(f * T) for f in stops if 0 < int(f * T) < T}) + [T], dtype=np.intp)
        return bank_paths(self.nodes, self.leaf_value, X, slots, self.roots, self.depth, self.rest_min, limit, at)


def range_margin(r: np.ndarray, range_k: Any) -> np.ndarray:
    """The range excess ``r`` on the forest margin's scale: ``0.1 * (r / range_k - 1)``, capped at 0.5
    (positive, i.e. alerting, beyond ``range_k`` widths outside the baseline's range)."""
    return np.minimum(0.1 * (r / range_k - 1.0), 0.5)


def _least_leaf_per_tree(flat: FlatForest) -> np.ndarray:
    """Per tree, the smallest leaf value a walk of ``flat.depth`` (or more) levels can end on: every
    node reachable from the root, without asking which rows can reach it. ``-inf`` for a tree whose
    walk would not have settled on a leaf by then (arrays that are not a proper forest): no bound."""
    child = flat.nodes["child"]
    T = len(flat.roots)
    tree = np.arange(T, dtype=np.intp)
    node = np.asarray(flat.roots, dtype=np.intp)
    for _ in range(flat.depth):
        c = child[node]
        inner = c != node
        if not inner.any():
            break
        ti, ci = tree[inner], c[inner]
        tree = np.concatenate([tree[~inner], ti, ti])
        node = np.concatenate([node[~inner], ci, ci + 1])
    least = np.full(T, np.inf)
    np.minimum.at(least, tree, flat.leaf_value[node])
    unsettled = child[node] != node
    if unsettled.any():
        least[np.unique(tree[unsettled])] = -np.inf
    return least


def _low_bytes(a: np.ndarray) -> np.ndarray:
    """A bool view of the least significant byte of each element of int64 array ``a``: writing
    False/True there makes an element that was 0 hold 0/1 (the other bytes stay 0)."""
    return a.view(bool)[0 if sys.byteorder == "little" else 7 :: 8]


def _walk(nodes: np.ndarray, leaf_value: np.ndarray, flat: np.ndarray, rows: np.ndarray, idx: np.ndarray,
          depth: int, block: int = 8192) -> np.ndarray:
    """Walk every (tree, row) pair ``depth`` levels down the ``NODE`` records; the leaf values reached
    (``FlatForest``: a model scored on its own; the bank has its compiled walk, ``forest_walk``).

    ``idx`` (tree-major start nodes) is walked in place. Per level: one gather of the nodes, one
    gather of the rows' feature values, a compare and an add, all into preallocated buffers;
    take(mode="clip") skips bounds checks, every index being in range by construction (leaves
    point at themselves). Pairs are walked ``block`` at a time so the buffers stay in the CPU
    cache across the levels (~20 % faster than whole-batch steps at 50k pairs).
    The compare writes its 0/1 into the low byte of zeroed int64s (``_low_bytes``), so the add
    to ``child`` is int64 + int64: with a bool operand NumPy cast it through a buffer on every
    level (the walk ~5 % faster on the fleet bench; the same sums, the values added being the same)."""
    m = min(len(idx), block)
    rec = np.empty(m, dtype=nodes.dtype)
    pos = np.empty(m, dtype=np.intp)
    x = np.empty(m, dtype=np.float32)
    right64 = np.zeros(m, dtype=np.int64)
    right = _low_bytes(right64)
    take_node, take_x, add, greater = nodes.take, flat.take, np.add, np.greater  # no fromnumeric wrapper per call
    for lo in range(0, len(idx), block):
        at = idx[lo : lo + block]
        k = len(at)
        r, p, xx, go, go64 = ((rec, pos, x, right, right64) if k == m
                              else (rec[:k], pos[:k], x[:k], right[:k], right64[:k]))
        child, feature, threshold = r["child"], r["feature"], r["threshold"]
        step = rows[lo : lo + block]
        for _ in range(depth):
            take_node(at, out=r, mode="clip")
            add(feature, step, out=p)
            take_x(p, out=xx, mode="clip")
            greater(xx, threshold, out=go)
            add(child, go64, out=at)
    return leaf_value.take(idx, mode="clip")  # in range as above; take skips fancy indexing's set-up


_UNUSED = np.array((0, 0, np.inf), dtype=BANK_NODE)
"""A bank node no forest uses: it loops on itself."""


def _float32_floor(t: np.ndarray) -> np.ndarray:
    """Largest float32 <= each float64 threshold: for float32 ``x``, ``x > t`` iff ``x > floor32(t)``.

    sklearn compares float32 inputs with float64 thresholds; this keeps the whole walk in float32
    (half the memory traffic) without changing a single decision.
    """
    t32 = t.astype(np.float32)
    up = t32.astype(np.float64) > t
    t32[up] = np.nextafter(t32[up], np.float32(-np.inf))
    return t32


def _flatten_forest(trees: Sequence[Any], fmaps: Sequence[np.ndarray | None]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Every tree's nodes renumbered breadth-first, trees one after the other: a node's two
    children are adjacent (left first), leaves loop onto themselves. Returns the ``NODE`` records,
    the leaf values (path length so far plus the expected remainder), the roots and the depth.

    Vectorised over all trees (refits are frequent): one NumPy step per tree level gives each
    node its depth and its path code (left 0, right 1, root first); breadth-first order within a
    tree is the order of (depth, code), which is how a FIFO queue that appends left then right
    children would number them."""
    counts = np.array([t.node_count for t in trees], dtype=np.intp)
    base = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp)
    tree_of = np.repeat(np.arange(len(trees), dtype=np.intp), counts)
    left = np.concatenate([t.children_left for t in trees]).astype(np.intp)
    right = np.concatenate([t.children_right for t in trees]).astype(np.intp)
    inner = left != -1
    left[inner] += base[tree_of[inner]]
    right[inner] += base[tree_of[inner]]
    feat = np.concatenate([t.feature if fm is None else np.where(t.feature >= 0, fm[np.maximum(t.feature, 0)], 0)
                           for t, fm in zip(trees, fmaps)]).astype(np.int64)
    feat[~inner] = 0
    thr = np.concatenate([t.threshold for t in trees]).astype(np.float64)
    thr[~inner] = np.inf
    apl = average_path_length(np.concatenate([t.n_node_samples for t in trees]))
    n = len(left)
    depth = np.zeros(n, dtype=np.intp)
    code = np.zeros(n, dtype=np.int64)
    level = base.copy()
    d = 0
    while True:
        depth[level] = d
        up = level[inner[level]]
        if not len(up):
            break
        code[left[up]] = 2 * code[up]
        code[right[up]] = 2 * code[up] + 1
        level = np.concatenate([left[up], right[up]])
        d += 1
    order = np.lexsort((code, depth, tree_of))  # new position -> old node; trees keep their blocks
    new = np.empty(n, dtype=np.intp)
    new[order] = np.arange(n, dtype=np.intp)
    child = np.where(inner, new[np.where(inner, left, 0)], new)
    val = np.where(inner, 0.0, (depth + 1) + apl - 1.0)  # sklearn counts the root as depth 1
    nodes = np.empty(n, dtype=NODE)
    nodes["child"] = child[order]
    nodes["feature"] = feat[order]
    nodes["threshold"] = _float32_floor(thr[order])
    return nodes, val[order], base, d


@dataclass(frozen=True, slots=True)
class ForestParams:
    """How a baseline forest is fitted and its threshold chosen."""

    n_estimators: int = 100
    max_samples: int = 256
    random_state: int = 0
    target_alert_rate: float = 0.002
    threshold_margin: float = 0.02
    """Added to the calibrated quantile: training rows score lower than fresh benign rows."""
    range_k: float = 0.75
    """A feature beyond the baseline's [min, max] by this share of the range's width (at least
    1.0 wide: one unit of a count or flag) is anomalous on its own. An IsolationForest cannot see
    past the range it was trained on (a value far beyond the training maximum lands in the same
    leaf as that maximum), so novelty is checked directly."""

    def validate(self) -> None:
        if self.n_estimators < 1:
            raise ValueError(f"iforest.n_estimators must be >= 1 (got {self.n_estimators})")
        if self.max_samples < 2:
            raise ValueError(f"iforest.max_samples must be >= 2 (got {self.max_samples})")
        if not 0.0 < self.target_alert_rate < 0.5:
            raise ValueError(f"iforest.target_alert_rate must be in (0, 0.5) (got {self.target_alert_rate})")
        if not self.range_k > 0:
            raise ValueError(f"iforest.range_k must be > 0 (got {self.range_k})")
        if not 0.0 <= self.threshold_margin < 1.0:
            raise ValueError(f"iforest.threshold_margin must be in [0, 1) (got {self.threshold_margin})")


class ForestModel:
    """One fitted baseline: forest, calibrated threshold, per-feature baseline for explanations."""

    def __init__(self, sample: np.ndarray, params: ForestParams) -> None:
        sample = np.ascontiguousarray(sample, dtype=np.float64)
        if sample.ndim != 2 or len(sample) < 2:
            raise ValueError("ForestModel needs a 2-D training sample of at least 2 rows")
        self.sample = sample
        self.params = params
        from sklearn.ensemble import IsolationForest

        self.forest: IsolationForest | None = IsolationForest(
            n_estimators=params.n_estimators,
            max_samples=min(params.max_samples, len(sample)),
            random_state=params.random_state,
        ).fit(sample)
        self.flat = FlatForest(self.forest)
        train = self.score(sample)
        self.threshold = float(np.quantile(train, 1.0 - params.target_alert_rate)) + params.threshold_margin
        self.median = np.median(sample, axis=0)
        q75, q25 = np.percentile(sample, [75, 25], axis=0)
        self.spread = np.maximum(q75 - q25, np.maximum(np.std(sample, axis=0), 1e-3))
        self.lo = sample.min(axis=0)
        self.hi = sample.max(axis=0)
        self.width = np.maximum(self.hi - self.lo, 1.0)

    FITTED = ("threshold", "median", "spread", "lo", "hi", "width")
    """What a fit computes besides the flattened forest: with it, ``fitted_arrays`` is the whole model."""

    def fitted_arrays(self) -> dict[str, np.ndarray]:
        """The fitted model as plain NumPy arrays (``np.savez``-able, no objects): how the refit worker
        process hands a model back. ``from_fitted_arrays`` rebuilds an identical model from them."""
        f = self.flat
        out = {"sample": self.sample, "nodes": f.nodes, "leaf_value": f.leaf_value, "roots": f.roots,
               "depth": np.array(f.depth), "n_features": np.array(f.n_features), "denominator": np.array(f.denominator)}
        out.update({k: np.asarray(getattr(self, k), dtype=np.float64) for k in self.FITTED})
        return out

    @classmethod
    def from_fitted_arrays(cls, a: dict[str, np.ndarray], params: ForestParams) -> "ForestModel":
        """The model ``fitted_arrays`` describes, without refitting (and without sklearn's objects:
        ``forest`` is None). Scores, thresholds and explanations are bit-identical to the original's."""
        self = cls.__new__(cls)
        self.sample = np.ascontiguousarray(a["sample"], dtype=np.float64)
        self.params = params
        self.forest = None
        self.flat = FlatForest.from_arrays(a["nodes"], a["leaf_value"], a["roots"], int(a["depth"]),
                                           int(a["n_features"]), float(a["denominator"]))
        F = self.sample.shape[1] if self.sample.ndim == 2 else -1
        if F != self.flat.n_features:
            raise ValueError("fitted arrays: sample and forest disagree on the number of features")
        self.threshold = float(a["threshold"])
        for k in cls.FITTED[1:]:
            v = np.asarray(a[k], dtype=np.float64)
            if v.shape != (F,):
                raise ValueError(f"fitted arrays: {k} has shape {v.shape}, expected ({F},)")
            setattr(self, k, v)
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        """Anomaly score in (0, 1]; higher = more anomalous (IsolationForest's ``s(x, n)``)."""
        return -self.flat.score_samples(X)

    def beyond_range(self, X: np.ndarray) -> np.ndarray:
        """Per row, the largest distance of any feature outside the baseline's [min, max], as a
        share of that range's width."""
        over = np.maximum(X - self.hi, self.lo - X) / self.width
        return np.maximum(over.max(axis=1), 0.0)

    def margins_from_paths(self, X: np.ndarray, paths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``margins`` given the rows' summed path lengths (from ``ForestBank.path_lengths``)."""
        den = self.flat.denominator
        s = np.ones(len(X)) if den == 0 else np.exp2(-paths / den)
        r = self.beyond_range(X)
        m = np.maximum(s - self.threshold, range_margin(r, self.params.range_k))
        return s, r, m

    def margins(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Forest score, range excess, and one decision margin (> 0 alerts) per row.

        The margin is the larger of ``score - threshold`` and the range excess mapped onto the
        same scale (``0.1 * (excess / range_k - 1)``, capped at 0.5), so one number orders rows
        for ROC curves and either test alone can raise an alert.
        """
        s = self.score(X)
        r = self.beyond_range(X)
        m = np.maximum(s - self.threshold, range_margin(r, self.params.range_k))
        return s, r, m

    def explain(self, x: np.ndarray, names: Sequence[str], k: int = 3) -> list[dict[str, Any]]:
        """The ``k`` features farthest from their baseline, as share of the total deviation."""
        dev = np.abs(x - self.median) / self.spread
        total = float(dev.sum()) or 1.0
        top = np.argsort(-dev, kind="stable")[:k]
        return [
            {"feature": names[j], "observed": round(float(x[j]), 4), "baseline": round(float(self.median[j]), 4),
             "contribution": round(float(dev[j]) / total, 4)}
            for j in top if dev[j] > 0
        ]

    def to_dict(self) -> dict[str, Any]:
        """The sample and params; built once (a fitted model never changes) and shared by every
        snapshot after, so the caller must not change it: each periodic snapshot re-encoded every
        model's sample."""
        cached = getattr(self, "_as_dict", None)
        if cached is None:
            cached = self._as_dict = self._to_dict()
        return cached

    def _to_dict(self) -> dict[str, Any]:
        return {"sample": encode_matrix(self.sample, narrow=True), "params": {
            "n_estimators": self.params.n_estimators, "max_samples": self.params.max_samples,
            "random_state": self.params.random_state, "target_alert_rate": self.params.target_alert_rate,
            "threshold_margin": self.params.threshold_margin, "range_k": self.params.range_k}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ForestModel":
        """Refit from the stored training sample; same sample and params give the same scores."""
        return cls(decode_matrix(d["sample"], "iforest snapshot: model sample"), ForestParams(**d["params"]))


def explain_many(X: np.ndarray, median: np.ndarray, spread: np.ndarray, names: Sequence[str], k: int = 3
                 ) -> list[list[dict[str, Any]]]:
    """``ForestModel.explain`` of each row of ``X`` under its own baseline (``median`` and ``spread``:
    one row per row of ``X``), in one pass for a batch's hits of any number of models.
    The same values bit for bit: elementwise NumPy, each row's sum and stable sort as in ``explain``,
    Python's rounding by one ``py_round``."""
    X = np.asarray(X, dtype=np.float64)
    dev = np.abs(X - median) / spread
    totals = dev.sum(axis=1)
    tops = np.argsort(-dev, axis=1, kind="stable")[:, :k]
    at = np.arange(len(X))[:, None], tops
    top_dev = dev[at]
    parts = (top_dev / np.where(totals == 0, 1.0, totals)[:, None], X[at], median[at])
    n = top_dev.size
    rounded = py_round(np.concatenate([p.ravel() for p in parts]), 4)
    contribution, observed, baseline = (rounded[i * n : (i + 1) * n].reshape(top_dev.shape).tolist() for i in range(3))
    return [[{"feature": names[j], "observed": o, "baseline": b, "contribution": c}
             for j, d, o, b, c in zip(top, ds, obs, base, cs) if d > 0]
            for top, ds, obs, base, cs in zip(tops.tolist(), top_dev.tolist(), observed, baseline, contribution)]


class SlotConstants:
    """The constants ``ForestModel.margins_from_paths`` needs (denominator, threshold, ``range_k``,
    baseline range), one row per ``ForestBank`` slot, built once when the banked models change: a
    batch then takes each row's constants by its slot, with no per-model Python and no regrouping of
    the rows by model. Same values, same elementwise operations as each model's own
    ``margins_from_paths``: bit-identical."""

    def __init__(self, models: Sequence[ForestModel], slots: Sequence[int], n_slots: int, n_features: int) -> None:
        at = np.asarray(slots, dtype=np.intp)
        self.den = np.zeros(n_slots)
        self.thr = np.zeros(n_slots)
        self.range_k = np.ones(n_slots)
        self.hi = np.zeros((n_slots, n_features))
        self.lo = np.zeros((n_slots, n_features))
        self.width = np.ones((n_slots, n_features))
        if len(models):
            self.den[at] = [m.flat.denominator for m in models]
            self.thr[at] = [m.threshold for m in models]
            self.range_k[at] = [m.params.range_k for m in models]
            self.hi[at] = [m.hi for m in models]
            self.lo[at] = [m.lo for m in models]
            self.width[at] = [m.width for m in models]

    def margins(self, slots: np.ndarray, X: np.ndarray, paths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``margins_from_paths`` for rows ``X`` scored in bank slots ``slots`` (one per row), each
        under the model in its slot."""
        return self.margins_given(slots, paths, self.excess(slots, X))

    def excess(self, slots: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Per row, ``ForestModel.beyond_range`` under its slot's model."""
        over = np.maximum(X - self.hi[slots], self.lo[slots] - X) / self.width[slots]
        return np.maximum(np.maximum.reduce(over, axis=1), 0.0)  # over.max(axis=1), without its Python wrapper

    def margins_given(self, slots: np.ndarray, paths: np.ndarray, r: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``margins`` with the range excess ``r`` already computed (``excess``). A NaN path (a row
        ``ForestBank.path_lengths_bounded`` proved clean) gives a NaN score and margin: no hit."""
        den = self.den[slots]
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.exp2(-paths / den)
        s[den == 0] = 1.0
        m = np.maximum(s - self.thr[slots], range_margin(r, self.range_k[slots]))
        return s, r, m

    SLACK = 1e-6
    """Relative room in ``hit_limits``: far above the rounding of a sum of a few hundred path
    lengths in another order (~1e-13 relative) and of ``log2``/``exp2`` (an ulp), far below
    any real difference between rows."""

    def hit_limits(self, slots: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Per row, a summed path length above which the row is certainly no hit: its forest score
        ``exp2(-paths / den)`` is then below its threshold, and its range excess ``r`` alone does not
        alert. ``inf`` (walk it all) where the range excess alerts or the slot has no denominator."""
        den, thr = self.den[slots], self.thr[slots]
        with np.errstate(divide="ignore", invalid="ignore"):
            limit = -den * np.log2(thr)
        limit = limit + self.SLACK * (np.abs(limit) + 1.0)
        range_hit = range_margin(r, self.range_k[slots]) > 0
        limit[range_hit | (den == 0) | ~(thr > 0)] = np.inf
        return limit
