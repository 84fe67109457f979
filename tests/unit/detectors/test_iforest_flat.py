"""FlatForest gives sklearn's scores; ForestModel calibrates, explains and refits identically."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.ensemble import IsolationForest

from toolwatch.detectors.iforest import FlatForest, ForestModel, ForestParams, _float32_floor, average_path_length


def data(seed: int, n: int = 600, f: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, f))
    X[:, 0] = rng.integers(0, 3, n)  # discrete column, like label counts
    X[:, 1] = np.exp(rng.normal(size=n))  # heavy tail, like byte sizes
    return X


@pytest.mark.parametrize("kw", [
    {},
    {"max_samples": 64, "n_estimators": 30},
    {"max_features": 0.5, "n_estimators": 25},  # trees see a subset of features
    {"max_samples": 2, "n_estimators": 5},
])
@pytest.mark.parametrize("seed", [0, 1])
def test_flat_forest_matches_sklearn_score_samples(kw, seed):
    X = data(seed)
    forest = IsolationForest(random_state=seed, **kw).fit(X)
    rng = np.random.default_rng(100 + seed)
    probe = np.vstack([X[:50], rng.normal(scale=4.0, size=(300, X.shape[1])), X[:5] + 1e-7])
    np.testing.assert_allclose(FlatForest(forest).score_samples(probe), forest.score_samples(probe), rtol=0, atol=1e-9)


def test_flat_forest_chunks_do_not_change_scores():
    X = data(3)
    flat = FlatForest(IsolationForest(random_state=0, n_estimators=20).fit(X))
    np.testing.assert_array_equal(flat.score_samples(X, chunk=7), flat.score_samples(X, chunk=4096))


def test_flat_forest_rejects_wrong_width():
    flat = FlatForest(IsolationForest(random_state=0, n_estimators=5).fit(data(0)))
    with pytest.raises(ValueError, match="6 features"):
        flat.score_samples(np.zeros((3, 4)))


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e30, max_value=1e30),
                min_size=1, max_size=20),
       st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_float32_floor_keeps_every_decision(thresholds, x):
    t = np.array(thresholds)
    x32 = np.float32(x)
    np.testing.assert_array_equal(np.float64(x32) > t, x32 > _float32_floor(t))


def test_average_path_length_known_values():
    np.testing.assert_allclose(average_path_length(np.array([0, 1, 2, 256])),
                               [0.0, 0.0, 1.0, 2 * (np.log(255) + np.euler_gamma) - 2 * 255 / 256])


def test_threshold_is_calibrated_to_the_target_alert_rate():
    rng = np.random.default_rng(0)
    train, fresh = rng.normal(size=(2000, 5)), rng.normal(size=(8000, 5))
    m = ForestModel(train, ForestParams(n_estimators=50, target_alert_rate=0.01, threshold_margin=0.0))
    rate = float(np.mean(m.score(fresh) > m.threshold))
    assert 0.002 < rate < 0.03
    stricter = ForestModel(train, ForestParams(n_estimators=50, target_alert_rate=0.01, threshold_margin=0.05))
    assert np.mean(stricter.score(fresh) > stricter.threshold) < rate


def test_far_outside_the_baseline_range_alerts_and_is_explained():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(500, 4))
    train[:, 3] = 0.0  # a label never seen in the baseline
    m = ForestModel(train, ForestParams(n_estimators=50))
    probe = np.array([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 60.0, 0.0, 0.0]])
    _s, excess, margin = m.margins(probe)
    assert margin[0] > 0 and margin[2] > 0 and margin[1] < 0
    assert excess[1] == 0.0
    expl = m.explain(probe[2], ["a", "b", "c", "d"])
    assert expl[0]["feature"] == "b" and expl[0]["observed"] == 60.0 and expl[0]["contribution"] > 0.9


def test_refit_from_plain_data_gives_identical_scores():
    m = ForestModel(data(4), ForestParams(n_estimators=40, random_state=7))
    m2 = ForestModel.from_dict(json.loads(json.dumps(m.to_dict())))
    probe = np.random.default_rng(9).normal(scale=3, size=(200, 6))
    np.testing.assert_array_equal(m.score(probe), m2.score(probe))
    assert m2.threshold == m.threshold


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=0, max_value=10_000))
def test_flat_forest_matches_on_random_forests(seed):
    X = data(seed, n=120, f=3)
    forest = IsolationForest(random_state=seed, n_estimators=8, max_samples=32).fit(X)
    probe = np.random.default_rng(seed).normal(scale=3, size=(64, 3))
    np.testing.assert_allclose(FlatForest(forest).score_samples(probe), forest.score_samples(probe), rtol=0, atol=1e-9)


@pytest.mark.parametrize("field,value", [("n_estimators", 0), ("max_samples", 1), ("target_alert_rate", 0.0),
                                         ("range_k", 0.0)])
def test_params_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ForestParams(**{field: value}).validate()


def _reference_layout(forest: IsolationForest) -> tuple[np.ndarray, ...]:
    """The flat layout as a plain FIFO queue builds it, tree after tree (the former implementation)."""
    subsample = forest._max_features != forest.n_features_in_
    feats, thrs, childs, vals, roots, base, depth = [], [], [], [], [], 0, 0
    for est, fmap in zip(forest.estimators_, forest.estimators_features_):
        t = est.tree_
        n = t.node_count
        feat, thr, child, val = np.zeros(n, np.int64), np.full(n, np.inf), np.zeros(n, np.int64), np.zeros(n)
        apl = average_path_length(t.n_node_samples)
        order, nxt, i = [(0, 0, 0)], 1, 0
        while i < len(order):
            node, pos, d = order[i]
            i += 1
            depth = max(depth, d)
            if t.children_left[node] == -1:
                child[pos], val[pos] = base + pos, (d + 1) + apl[node] - 1.0
                continue
            f = int(t.feature[node])
            feat[pos] = fmap[f] if subsample else f
            thr[pos], child[pos] = t.threshold[node], base + nxt
            order += [(int(t.children_left[node]), nxt, d + 1), (int(t.children_right[node]), nxt + 1, d + 1)]
            nxt += 2
        feats.append(feat), thrs.append(thr), childs.append(child), vals.append(val), roots.append(base)
        base += n
    return (np.concatenate(feats), _float32_floor(np.concatenate(thrs)), np.concatenate(childs),
            np.concatenate(vals), np.array(roots), depth)


@pytest.mark.parametrize("kw", [{}, {"max_samples": 2, "n_estimators": 4}, {"max_features": 0.5, "n_estimators": 15},
                                {"max_samples": 1000, "n_estimators": 3}])
@pytest.mark.parametrize("seed", [0, 7])
def test_vectorised_flattening_equals_a_fifo_queue(kw, seed):
    """The all-trees-at-once renumbering gives exactly the queue's layout, array for array."""
    X = data(seed, n=1200)
    X[: 200, 2] = 1.0  # ties: leaves of many samples at varied depths
    forest = IsolationForest(random_state=seed, **kw).fit(X)
    flat = FlatForest(forest)
    feat, thr, child, val, roots, depth = _reference_layout(forest)
    np.testing.assert_array_equal(flat.nodes["feature"], feat)
    np.testing.assert_array_equal(flat.nodes["threshold"], thr)
    np.testing.assert_array_equal(flat.nodes["child"], child)
    np.testing.assert_array_equal(flat.leaf_value, val)
    np.testing.assert_array_equal(flat.roots, roots)
    assert flat.depth == depth


@pytest.mark.parametrize("block", [1, 7, 100, 8192])
def test_walk_in_blocks_reaches_the_same_leaves(block):
    """Cache-sized blocks of (tree, row) pairs, remainders included, walk like one whole step."""
    from toolwatch.detectors.iforest import _walk

    X = data(4)
    flat = FlatForest(IsolationForest(random_state=0, n_estimators=13).fit(X))
    probe = np.ascontiguousarray(np.vstack([X[:90], X[:9] * 3.0]), dtype=np.float32)
    n, F = probe.shape
    rows = np.tile(np.arange(n, dtype=np.intp) * F, len(flat.roots))

    def leaves(b: int) -> np.ndarray:
        return _walk(flat.nodes, flat.leaf_value, probe.ravel(), rows, np.repeat(flat.roots, n), flat.depth, b)

    np.testing.assert_array_equal(leaves(block), leaves(10**9))
