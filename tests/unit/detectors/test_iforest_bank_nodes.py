"""``ForestBank``'s 8-byte ``BANK_NODE`` records (left child as an offset from the node), walked by the
bank's compiled walk: the same leaves as ``_walk`` over the forest's own ``NODE`` records, bit for bit, and
forests whose offsets or features do not fit 16 bits are left out of the bank (scored on their own)."""

from __future__ import annotations

import numpy as np
import pytest

from toolwatch.detectors.features import N_FEATURES
from toolwatch.detectors.iforest import (BANK_NODE, NODE, REL_MAX, FlatForest, ForestBank, ForestModel, ForestParams,
                                         _walk)


def _model(seed: int, n_estimators: int = 9) -> ForestModel:
    rnd = np.random.default_rng(seed)
    return ForestModel(rnd.normal(size=(200, N_FEATURES)), ForestParams(n_estimators=n_estimators, max_samples=128))


def test_walk_over_the_bank_reaches_the_leaves_it_reaches_over_the_forests_own_nodes():
    """Rows walked through their models' bank slots end on the leaves (so the values) ``_walk``
    reaches through each model's own arrays, values on split thresholds (ties go left) included:
    each row's sum is its own leaves' values added tree after tree."""
    models = [_model(s) for s in range(3)]
    bank = ForestBank(9, 9 * 255, N_FEATURES)
    slots = bank.sync([m.flat for m in models])
    rnd = np.random.default_rng(7)
    X = np.ascontiguousarray(rnd.normal(scale=2.0, size=(60, N_FEATURES)), dtype=np.float32)
    owner = rnd.integers(0, 3, len(X))
    for i in range(40):  # a split's own threshold: the comparison's edge
        f = models[owner[i]].flat
        node = rnd.choice(np.flatnonzero(f.nodes["child"] != np.arange(len(f.nodes))))
        X[i, f.nodes["feature"][node]] = f.nodes["threshold"][node]
    got = bank.path_lengths(X, np.array(slots)[owner])
    want = np.empty(len(X))
    for i in range(len(X)):
        f = models[owner[i]].flat
        leaves = _walk(f.nodes, f.leaf_value, X[i], np.zeros(9, dtype=np.intp), f.roots.copy(), f.depth)
        total = 0.0
        for v in leaves.tolist():
            total += v
        want[i] = total
    assert got.tobytes() == want.tobytes()
    assert bank.nodes.dtype == BANK_NODE and BANK_NODE.itemsize == 8


def _far_child_forest(offset: int) -> FlatForest:
    """One tree: a root whose children sit ``offset`` nodes after it, every other node a leaf."""
    n = offset + 2
    nodes = np.zeros(n, dtype=NODE)
    nodes["child"] = np.arange(n)
    nodes["threshold"] = np.inf
    nodes[0] = (offset, 3, 0.5)
    leaf = np.zeros(n)
    leaf[offset], leaf[offset + 1] = 1.0, 2.0
    return FlatForest.from_arrays(nodes, leaf, np.array([0]), 1, N_FEATURES, 1.0)


def test_offsets_beyond_16_bits_keep_a_forest_out_of_the_bank():
    bank = ForestBank(1, 2 * REL_MAX + 8, N_FEATURES)
    near, far = _far_child_forest(REL_MAX), _far_child_forest(REL_MAX + 1)
    assert bank.fits(near) and not bank.fits(far)
    slot = bank.sync([near])[0]
    X = np.zeros((2, N_FEATURES))
    X[1, 3] = 1.0
    np.testing.assert_array_equal(bank.path_lengths(X, np.array([slot, slot])), [1.0, 2.0])


def test_a_smaller_refit_in_a_reused_slot_scores_like_its_own_forest():
    """A slot freed by a large forest and taken by a smaller one: only the new forest's nodes and roots count."""
    big, small = _model(1, 9), ForestModel(np.random.default_rng(2).normal(size=(20, N_FEATURES)),
                                           ForestParams(n_estimators=9, max_samples=16))
    assert len(small.flat.nodes) < len(big.flat.nodes)
    bank = ForestBank(9, 9 * 255, N_FEATURES)
    first = bank.sync([big.flat])[0]
    assert bank.sync([small.flat]) == [first]
    X = np.random.default_rng(3).normal(scale=3.0, size=(50, N_FEATURES))
    at = np.full(len(X), first, dtype=np.intp)
    paths = bank.path_lengths(X, at)
    assert paths.tobytes() == small.flat._depths(np.ascontiguousarray(X, dtype=np.float32)).tobytes()
    # the bounded walk takes its roots by chunks of trees, which must follow the slot's new forest
    assert bank.path_lengths_bounded(X, at, np.full(len(X), np.inf)).tobytes() == paths.tobytes()
    assert np.array_equal(bank.roots[:, first], small.flat.roots + first * bank.slot_nodes)
