"""The forest bank's walk, compiled with numba: each row's summed path length over its model's trees.

Why compiled: with a model per agent, the bank is ~100 MB of tree nodes, and NumPy's level-by-level
gathers (``iforest._walk``) wrote and re-read index, feature and compare buffers for every (tree,
row) pair on every level, then summed a (trees x rows) matrix; that streamed megabytes per batch
through the caches the other detectors use. Here rows are taken one model (slot) at a time, so a
tree's few kilobytes of nodes serve all of the batch's rows of that model while they sit in L1,
and a row's running sum is one register: on fleet traffic after 300,000 calls the walk takes about
half NumPy's CPU per row (``bench/forest_walk.py``; docs/baselines.md).

The results are ``FlatForest._depths``' bit for bit: a row's sum adds its trees' leaf values in
tree order, as NumPy's ``sum(axis=0)`` of a (trees, rows) matrix of two or more columns does.
numba compiles the kernel on first use (about 1.5 s) and caches the machine code (``_compiled``), so
later processes load it in about 0.1 s.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Callable

import numpy as np

__all__ = ["bank_paths"]


def _bank_paths(rel: np.ndarray, feature: np.ndarray, threshold: np.ndarray, leaf_value: np.ndarray,
                X: np.ndarray, slots: np.ndarray, roots: np.ndarray, depth: np.ndarray, rest_min: np.ndarray,
                limit: np.ndarray, stops: np.ndarray, out: np.ndarray) -> np.ndarray:  # pragma: no cover (compiled)
    """The kernel (see ``bank_paths``). Rows of one slot are walked together, tree after tree, and
    level by level across those rows: the rows' walks are independent, so their node fetches overlap
    instead of each waiting on the one before (a row walked down a tree alone was slower than NumPy)."""
    n, F = X.shape
    T = roots.shape[0]
    flat = X.ravel()
    order = np.argsort(slots, kind="mergesort")
    acc = np.zeros(n)
    alive = np.ones(n, dtype=np.bool_)
    live = np.empty(n, dtype=np.intp)
    base = np.empty(n, dtype=np.intp)
    node = np.empty(n, dtype=np.intp)
    i0 = 0
    while i0 < n:
        s = slots[order[i0]]
        i1 = i0 + 1
        while i1 < n and slots[order[i1]] == s:
            i1 += 1
        levels = depth[s]
        t0 = 0
        for c in range(len(stops)):
            t1 = stops[c]
            m = 0
            for r in range(i0, i1):
                if alive[r]:
                    live[m] = r
                    base[m] = order[r] * F
                    m += 1
            for t in range(t0, t1):
                root = roots[t, s]
                for k in range(m):
                    node[k] = root
                for _ in range(levels):  # a leaf's offset is 0 and its threshold inf: it stays put
                    for k in range(m):
                        at = node[k]
                        node[k] = at + rel[at] + (flat[base[k] + feature[at]] > threshold[at])
                for k in range(m):
                    acc[live[k]] += leaf_value[node[k]]
            if t1 < T:
                least = rest_min[s, t1]
                for r in range(i0, i1):
                    if alive[r] and acc[r] + least > limit[order[r]]:
                        alive[r] = False
            t0 = t1
        for r in range(i0, i1):
            out[order[r]] = acc[r] if alive[r] else np.nan
        i0 = i1
    return out


@cache
def _compiled() -> Callable[..., np.ndarray]:
    """The kernel compiled on first use: importing numba (~0.3 s) is paid only by a process that
    scores a bank, not by every command that imports the detectors. The machine code is cached
    beside this file, else in the user's cache directory (an installed package the daemon's user
    cannot write); where neither can be written it is compiled in each process instead."""
    from numba import njit

    try:
        return njit(cache=True, nogil=True, boundscheck=False)(_bank_paths)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return njit(nogil=True, boundscheck=False)(_bank_paths)


def bank_paths(nodes: np.ndarray, leaf_value: np.ndarray, X: np.ndarray, slots: np.ndarray, roots: np.ndarray,
               depth: np.ndarray, rest_min: np.ndarray, limit: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Per row of ``X`` (float32, C order), the sum over the trees of slot ``slots[i]`` of its path
    length, or NaN once proven above ``limit[i]``: after trees ``..stops[c]`` (``stops`` ascending,
    ending with the number of trees) a row whose sum so far plus ``rest_min[slot, stops[c]]`` (the
    least its remaining trees can add) exceeds its limit is not walked further. An infinite limit
    walks every row to the end. ``nodes`` are ``BANK_NODE`` records; every index in them, in
    ``roots`` and ``slots`` must be in range (``ForestBank`` builds them so: bounds are not checked)."""
    kernel: Any = _compiled()
    return kernel(nodes["rel"], nodes["feature"], nodes["threshold"], leaf_value, X,
                  np.ascontiguousarray(slots, dtype=np.intp), roots, depth, rest_min,
                  np.ascontiguousarray(limit, dtype=np.float64), stops, np.empty(len(X)))
