"""The shared detector conformance checks, run against the ML detectors."""

from __future__ import annotations

import pytest

import conformance as C  # noqa: E402  (tests/unit/detectors is on sys.path via conftest)
from toolwatch.detectors.iforest import ForestParams
from toolwatch.detectors.iforest_detector import ForestConfig, IsolationForestDetector
from toolwatch.detectors.sequence import MarkovConfig
from toolwatch.detectors.sequence_detector import SequenceConfig, SequenceDetector

SMALL_MARKOV = MarkovConfig(max_tokens=32, max_transitions=64, max_mass=500.0)


def seq() -> SequenceDetector:
    return SequenceDetector(SequenceConfig(min_calls=50, min_sessions=5, max_open_sessions=4,
                                           markov=SMALL_MARKOV))


def forest() -> IsolationForestDetector:
    return IsolationForestDetector(ForestConfig(
        forest=ForestParams(n_estimators=20, max_samples=64), markov=SMALL_MARKOV, min_rows=40,
        max_rows=128, retrain_every=150, group_retrain_every=300, warm_calls=20, session_idle_s=120,
        max_open_sessions=4, max_destinations=16, max_pending_rows=8))


FACTORIES = [pytest.param(seq, id="sequence"), pytest.param(forest, id="iforest")]


@pytest.mark.parametrize("make", FACTORIES)
def test_score_before_learning(make):
    C.check_score_before_learning(make)


@pytest.mark.parametrize("make", FACTORIES)
def test_unseen_tools_are_flagged_once_trained(make):
    found = C.check_unseen_tools(make)
    assert any(f.tool == "exfiltrate" for f in found), [f.reason for f in found]


@pytest.mark.parametrize("make", FACTORIES)
def test_missing_attributes(make):
    C.check_missing_attributes(make)


@pytest.mark.parametrize("make", FACTORIES)
def test_snapshot_restore_identical(make):
    C.check_snapshot_restore_identical(make)


@pytest.mark.parametrize("make", FACTORIES)
def test_per_agent_move(make):
    C.check_per_agent_move(make)


@pytest.mark.parametrize("make", FACTORIES)
def test_bounded_memory(make):
    C.check_bounded_memory(make)


@pytest.mark.parametrize("make", FACTORIES)
def test_agent_states_readable(make):
    det = make()
    C.feed(det, C.routine_traffic("a", 40))
    states = det.agent_states()
    assert states == {"a": "active"}
    det.freeze("a")
    assert det.agent_states() == {"a": "frozen"}
