"""The bank's compiled walk (``forest_walk.bank_paths``) against each model's own NumPy walk
(``FlatForest._depths``): the same sums, bit for bit, whatever the order of the rows' slots, with
rows on split thresholds (ties go left), and every index checked before the unchecked kernel."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolwatch.detectors.features import N_FEATURES
from toolwatch.detectors.iforest import ForestBank, ForestModel, ForestParams

N_TREES = 15


def _models(seed: int, n_models: int) -> list[ForestModel]:
    rnd = np.random.default_rng(seed)
    params = ForestParams(n_estimators=N_TREES, max_samples=int(rnd.integers(8, 80)), random_state=seed)
    return [ForestModel(rnd.normal(loc=i, scale=1 + i, size=(int(rnd.integers(40, 200)), N_FEATURES)), params)
            for i in range(n_models)]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, 5), st.integers(2, 120))
def test_bank_sums_equal_each_models_own_walk_bit_for_bit(seed, n_models, n):
    models = _models(seed, n_models)
    bank = ForestBank(N_TREES, N_TREES * (2 * 80 - 1), N_FEATURES)
    slots = np.array(bank.sync([m.flat for m in models]), dtype=np.intp)
    rnd = np.random.default_rng(seed + 1)
    which = rnd.integers(0, n_models, n)
    X = rnd.normal(loc=which[:, None], scale=3.0, size=(n, N_FEATURES)).astype(np.float32)
    for i in range(0, n, 3):  # a third of the rows sit on one of their model's split thresholds
        f = models[which[i]].flat
        inner = np.flatnonzero(f.nodes["child"] != np.arange(len(f.nodes)))
        node = rnd.choice(inner)
        X[i, f.nodes["feature"][node]] = f.nodes["threshold"][node]
    got = bank.path_lengths(X, slots[which])
    for k, m in enumerate(models):
        rows = np.flatnonzero(which == k)
        if len(rows) >= 2:  # NumPy sums one column pairwise; two or more tree after tree, as the bank
            assert got[rows].tobytes() == m.flat._depths(X[rows]).tobytes()
        elif len(rows) == 1:
            assert got[rows] == pytest.approx(m.flat._depths(X[rows]), rel=1e-12)
    assert len(set(got.tolist())) > 1  # the rows went different ways


def test_a_batch_in_any_order_of_slots_gets_the_same_sums():
    models = _models(3, 4)
    bank = ForestBank(N_TREES, N_TREES * (2 * 80 - 1), N_FEATURES)
    slots = np.array(bank.sync([m.flat for m in models]), dtype=np.intp)
    rnd = np.random.default_rng(5)
    X = rnd.normal(size=(64, N_FEATURES)).astype(np.float32)
    row_slots = slots[rnd.integers(0, 4, 64)]
    want = bank.path_lengths(X, row_slots)
    perm = rnd.permutation(64)
    assert bank.path_lengths(X[perm], row_slots[perm]).tobytes() == want[perm].tobytes()


@pytest.mark.parametrize("bad", [[0, 4], [-1, 0], [0]])
def test_slots_out_of_range_or_miscounted_are_refused_before_the_walk(bad):
    models = _models(1, 2)
    bank = ForestBank(N_TREES, N_TREES * (2 * 80 - 1), N_FEATURES)
    bank.sync([m.flat for m in models])  # four slots: the bank grows by at least four
    X = np.zeros((2, N_FEATURES), dtype=np.float32)
    with pytest.raises(ValueError, match="one slot in"):
        bank.path_lengths(X, np.array(bad, dtype=np.intp))


def test_the_walk_compiles_where_no_cache_can_be_written(tmp_path):
    """An installed package the daemon's user cannot write, with no writable cache directory:
    numba finds no cache locator (here: only IPython's, which serves no file) and the kernel is
    compiled without a cache, giving the same sums."""
    script = (
        "import numpy as np\n"
        "from toolwatch.detectors import forest_walk\n"
        "from toolwatch.detectors.features import N_FEATURES\n"
        "from toolwatch.detectors.iforest import ForestBank, ForestModel, ForestParams\n"
        "m = ForestModel(np.random.default_rng(0).normal(size=(100, N_FEATURES)), ForestParams(n_estimators=5, max_samples=32))\n"
        "bank = ForestBank(5, 5 * 63, N_FEATURES)\n"
        "slot = bank.sync([m.flat])[0]\n"
        "X = np.random.default_rng(1).normal(size=(7, N_FEATURES)).astype(np.float32)\n"
        "got = bank.path_lengths(X, np.full(7, slot))\n"
        "assert got.tobytes() == m.flat._depths(X).tobytes(), (got, m.flat._depths(X))\n"
        "assert not forest_walk._compiled()._cache.__class__.__name__.endswith('FunctionCache')\n"
        "print('ok')\n"
    )
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "IPythonCacheLocator"}
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
