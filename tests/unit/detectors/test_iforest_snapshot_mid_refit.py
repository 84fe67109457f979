"""A snapshot taken while a refit is in flight (the retrainer's thread, beside the snapshot on the
event loop) records the refit as still wanted, so a restart from it refits at once; one taken after
the new models are in place records them as before."""

from __future__ import annotations

import threading

import numpy as np

from toolwatch.detectors.features import N_FEATURES
from toolwatch.detectors.iforest import ForestModel, ForestParams
from toolwatch.detectors.iforest_detector import GROUPS, ForestConfig, IsolationForestDetector


class _HeldFitter:
    """Fits real models, each only once ``release`` is set: the refit stays in flight meanwhile."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, rows: np.ndarray, params: ForestParams) -> ForestModel:
        self.started.set()
        assert self.release.wait(30), "the test never released the fit"
        return ForestModel(rows, params)


def _detector() -> IsolationForestDetector:
    """Agents "a" and "b" with models, in one group fitted long ago (a full group refit is due)."""
    det = IsolationForestDetector(ForestConfig(forest=ForestParams(n_estimators=5, max_samples=32), min_rows=40,
                                               max_rows=128, retrain_every=200, group_retrain_every=300,
                                               auto_retrain=False))
    rng = np.random.default_rng(3)
    for a in ("a", "b"):
        st = det.state_for(a)
        st.add_rows(rng.normal(size=(80, N_FEATURES)))
        det._models[a] = ForestModel(st.window(), det.config.forest)
        st.since_fit = 0
    det.retrain([GROUPS])  # the group models, fitted in-process
    det._group_since = 700
    return det


def _restarted(state: dict) -> IsolationForestDetector:
    det = IsolationForestDetector(_detector().config)
    det.restore(state)
    return det


def test_a_snapshot_mid_group_refit_asks_for_it_again_and_one_after_it_keeps_the_new_models() -> None:
    det = _detector()
    det._state["a"].add_rows(np.random.default_rng(4).normal(size=(30, N_FEATURES)))  # new rows: a new group model
    old = det.snapshot()["models"]
    assert GROUPS in det.needs_retrain()
    fitter = det.fitter = _HeldFitter()
    refit = threading.Thread(target=det.retrain, args=([GROUPS],))
    refit.start()
    try:
        assert fitter.started.wait(30)
        mid = det.snapshot()
        assert mid["group_since"] == 700  # was 0: no group refit for 300 more rows
        assert mid["models"] == old
        assert GROUPS in _restarted(mid).needs_retrain()
    finally:
        fitter.release.set()
        refit.join(30)
    after = det.snapshot()
    assert after["group_since"] == 0 and GROUPS not in _restarted(after).needs_retrain()
    assert [k for k in after["models"] if after["models"][k] != old.get(k)] == ["group:"]


def test_a_snapshot_mid_agent_refit_keeps_the_rows_since_the_last_fit_and_the_rows_added_meanwhile() -> None:
    det = _detector()
    det._state["a"].since_fit = 250
    fitter = det.fitter = _HeldFitter()
    refit = threading.Thread(target=det.retrain, args=(["a"],))
    refit.start()
    try:
        assert fitter.started.wait(30)
        det._state["a"].add_rows(np.zeros((7, N_FEATURES)))  # observe goes on meanwhile
        mid = det.snapshot()
        assert mid["agents"]["a"]["since_fit"] == 257
        assert "a" in _restarted(mid).needs_retrain()
    finally:
        fitter.release.set()
        refit.join(30)
    after = det.snapshot()
    assert after["agents"]["a"]["since_fit"] == 7  # as before: the rows added during the fit
    assert "a" not in _restarted(after).needs_retrain()
