"""IsolationForestDetector: retraining off the hot path, group models, explanations, state."""

from __future__ import annotations

import json

import numpy as np
import pytest

import conformance as C
from toolwatch.detectors.events import Batch
from toolwatch.detectors.iforest import ForestParams
from toolwatch.detectors.iforest_detector import GROUPS, ForestConfig, IsolationForestDetector


def config(**kw) -> ForestConfig:
    base = dict(forest=ForestParams(n_estimators=30, max_samples=64), min_rows=60, max_rows=256,
                retrain_every=200, group_retrain_every=400, warm_calls=20, session_idle_s=120)
    base.update(kw)
    return ForestConfig(**base)


def test_retraining_is_requested_and_run_by_the_caller():
    det = IsolationForestDetector(config(auto_retrain=False))
    C.feed(det, C.routine_traffic("a", 30))
    assert det.agent_states() == {"a": "learning"}
    keys = det.needs_retrain()
    assert keys == ["a", GROUPS]
    assert det.observe(Batch(calls=C.session_calls("a", "x", ["fs/list_dir"], C.T0 + 10**6 * C.S))) == []
    assert det.agent_states() == {"a": "learning"}  # observe did not fit anything
    assert set(det.retrain(keys)) == {"a", "group:fs,git,shell"}
    assert det.agent_states() == {"a": "active"} and det.needs_retrain() == []


def test_an_odd_call_is_flagged_with_an_explanation():
    det = IsolationForestDetector(config())
    C.feed(det, C.routine_traffic("a", 40))
    calls = C.session_calls("a", "a-odd", ["fs/list_dir", "fs/read_file"], C.T0 + 10**6 * C.S)
    calls[1].result_bytes = 50_000_000
    calls[1].destinations = ("drop.example",)
    found, margins = det.observe_scored(Batch(calls=calls))
    assert [f.span_ids for f in found] == [(calls[1].span_id,)]
    assert margins[1] > 0 > margins[0]
    ev = found[0].evidence
    feats = [e["feature"] for e in ev["explanation"]]
    assert "log_result_bytes" in feats and ev["model"] == "agent" and ev["state"] == "active"
    top = ev["explanation"][feats.index("log_result_bytes")]
    assert top["observed"] > 17 > top["baseline"]
    json.dumps(found[0].to_dict())


def test_a_newcomer_is_scored_by_its_group_until_it_has_its_own_model():
    det = IsolationForestDetector(config())
    C.feed(det, C.routine_traffic("old1", 40) + C.routine_traffic("old2", 40, start_ns=C.T0 + 7 * C.S, seed=1))
    C.feed(det, C.routine_traffic("new", 3, start_ns=C.T0 + 10**5 * C.S))
    assert det.agent_states()["new"] == "learning"
    calls = C.session_calls("new", "n-odd", ["fs/list_dir", "fs/read_file"], C.T0 + 10**6 * C.S)
    calls[1].result_bytes = 50_000_000
    found = det.observe(Batch(calls=calls))
    assert len(found) == 1 and found[0].evidence["model"] == "group:fs,git,shell"


def _odd_sessions(agent: str, n: int, start_ns: int) -> list:
    """``n`` two-call sessions whose reads return 50 MB: every read is unlike the fleet's habit."""
    calls = []
    for k in range(n):
        sess = C.session_calls(agent, f"{agent}-odd{k}", ["fs/list_dir", "fs/read_file"], start_ns + k * 600 * C.S)
        sess[1].result_bytes = 50_000_000
        calls += sess
    return calls


def test_a_group_that_flags_too_many_of_a_newcomers_calls_stops_scoring_it():
    det = IsolationForestDetector(config(group_check_calls=10, group_max_alert_rate=0.2))
    C.feed(det, C.routine_traffic("old1", 40) + C.routine_traffic("old2", 40, start_ns=C.T0 + 7 * C.S, seed=1))
    C.feed(det, C.routine_traffic("new", 3, start_ns=C.T0 + 10**5 * C.S))
    assert det.scoring_counts() == {"own": 2, "group": 1, "none": 0}
    odd = _odd_sessions("new", 5, C.T0 + 10**6 * C.S)  # 10 calls, 5 flagged: 50 % > 20 %
    found = C.feed(det, odd, size=2)
    assert len(found) == 5 and {f.evidence["model"] for f in found} == {"group:fs,git,shell"}
    assert det._state["new"].misfits == {"group:fs,git,shell"}
    assert det.scoring_counts() == {"own": 2, "group": 0, "none": 1}
    more, margins = det.observe_scored(Batch(calls=_odd_sessions("new", 1, C.T0 + 10**7 * C.S)))
    assert more == [] and np.isnan(margins).all()  # the group no longer scores it
    assert det.agent_states()["new"] == "learning"
    again = IsolationForestDetector(config(group_check_calls=10, group_max_alert_rate=0.2))
    again.restore(json.loads(json.dumps(det.snapshot())))
    assert again._state["new"].misfits == {"group:fs,git,shell"}
    # Its own sessions now join its window (no finding taints them): it gets a model of its own.
    C.feed(det, C.routine_traffic("new", 30, start_ns=C.T0 + 10**8 * C.S))
    assert det.agent_states()["new"] == "active"


def test_a_restart_goes_on_judging_a_newcomers_group_where_it_was():
    """The calls and hits counted towards the next judgement are saved: restored from a snapshot taken
    half-way, the group is retired after the same calls as in the daemon that went on (a fresh tally
    let it score, and alert on, up to ``group_check_calls`` more calls after every restart)."""
    cfg = dict(group_check_calls=10, group_max_alert_rate=0.2)
    det = IsolationForestDetector(config(**cfg))
    C.feed(det, C.routine_traffic("old1", 40) + C.routine_traffic("old2", 40, start_ns=C.T0 + 7 * C.S, seed=1))
    C.feed(det, C.routine_traffic("new", 3, start_ns=C.T0 + 10**5 * C.S))
    odd = _odd_sessions("new", 5, C.T0 + 10**6 * C.S)  # 10 calls, 5 flagged: retired after the tenth
    assert len(C.feed(det, odd[:6], size=2)) == 3 and not det._state["new"].misfits
    saved = det.snapshot()
    assert saved["agents"]["new"]["group_tally"] == {
        "key": "group:fs,git,shell", "calls": 6, "hits": 3, "sessions": ["new-odd0", "new-odd1", "new-odd2"]}
    again = IsolationForestDetector(config(**cfg))
    again.restore(json.loads(json.dumps(saved)))
    for d in (det, again):
        assert len(C.feed(d, odd[6:], size=2)) == 2
        assert d._state["new"].misfits == {"group:fs,git,shell"}
    assert "group_tally" not in again.snapshot()["agents"]["new"]  # judged: a new tally, not saved until it counts
    bad = json.loads(json.dumps(saved))
    bad["agents"]["new"]["group_tally"]["hits"] = 7  # more hits than calls
    with pytest.raises(ValueError, match="group_tally"):
        IsolationForestDetector(config(**cfg)).restore(bad)


def test_one_attack_session_does_not_retire_a_newcomers_group():
    det = IsolationForestDetector(config(group_check_calls=10, group_max_alert_rate=0.2))
    C.feed(det, C.routine_traffic("old1", 40) + C.routine_traffic("old2", 40, start_ns=C.T0 + 7 * C.S, seed=1))
    C.feed(det, C.routine_traffic("new", 3, start_ns=C.T0 + 10**5 * C.S))
    attack = C.session_calls("new", "new-attack", ["fs/list_dir"] + ["fs/read_file"] * 9, C.T0 + 10**6 * C.S)
    for c in attack[1:]:
        c.result_bytes = 50_000_000
    found = C.feed(det, attack, size=2)  # 9 of 10 calls flagged, all in one session
    assert len(found) == 9 and not det._state["new"].misfits
    _f, margins = det.observe_scored(Batch(calls=C.session_calls("new", "n", ["fs/list_dir"], C.T0 + 10**8 * C.S)))
    assert np.isfinite(margins).all()


def test_a_group_that_fits_a_newcomer_keeps_scoring_it():
    det = IsolationForestDetector(config(group_check_calls=10, group_max_alert_rate=0.2))
    C.feed(det, C.routine_traffic("old1", 40) + C.routine_traffic("old2", 40, start_ns=C.T0 + 7 * C.S, seed=1))
    C.feed(det, C.routine_traffic("new", 3, start_ns=C.T0 + 10**5 * C.S))
    # 10 calls, 1 flagged: 10 % <= 20 %
    calls = C.routine_traffic("new", 2, start_ns=C.T0 + 10**6 * C.S, seed=2)[:9] + _odd_sessions(
        "new", 1, C.T0 + 10**7 * C.S)[1:]
    assert len(calls) == 10
    found = C.feed(det, calls, size=2)
    assert len(found) == 1 and not det._state["new"].misfits
    _f, margins = det.observe_scored(Batch(calls=C.session_calls("new", "n", ["fs/list_dir"], C.T0 + 10**8 * C.S)))
    assert np.isfinite(margins).all()


def test_rows_of_sessions_with_findings_stay_out_of_the_baseline():
    det = IsolationForestDetector(config(auto_retrain=False))
    train = C.routine_traffic("a", 40)
    C.feed(det, train)
    det.retrain()
    st = det._state["a"]
    n0 = st.n_buf + sum(1 for c in train if c.session_id == "a-s39")  # still open: joins later
    calls = C.session_calls("a", "bad", ["fs/list_dir", "fs/read_file", "fs/read_file"], C.T0 + 10**6 * C.S)
    calls[1].result_bytes = 50_000_000
    assert len(det.observe(Batch(calls=calls))) == 1
    good = C.session_calls("a", "good", ["fs/list_dir", "fs/read_file"], C.T0 + 10**6 * C.S + 10)
    det.observe(Batch(calls=good))
    C.feed(det, C.routine_traffic("a", 1, start_ns=C.T0 + 10**7 * C.S))  # closes both sessions
    assert st.n_buf == n0 + 2  # "good" joined, "bad" did not


def test_frozen_agents_keep_their_baseline():
    det = IsolationForestDetector(config())
    C.feed(det, C.routine_traffic("a", 40))
    det.freeze("a")
    before = det.snapshot_agent("a")["rows"]
    C.feed(det, C.routine_traffic("a", 20, start_ns=C.T0 + 10**6 * C.S))
    assert det.snapshot_agent("a")["rows"] == before and det.needs_retrain() == []


@pytest.mark.parametrize("field,value", [("min_rows", 4), ("retrain_every", 0), ("max_rows", 10),
                                         ("prior_min_containment", 0.0), ("explain_top", 0),
                                         ("max_pending_rows", 0), ("max_pending_rows", -5),
                                         ("group_check_calls", 0), ("group_max_alert_rate", 0.0),
                                         ("group_max_alert_rate", 1.5)])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        IsolationForestDetector(config(**{field: value}))


def test_margins_are_nan_until_a_model_covers_the_agent():
    det = IsolationForestDetector(config())
    _f, m = det.observe_scored(Batch(calls=C.session_calls("a", "s", ["fs/list_dir"], C.T0)))
    assert np.isnan(m).all()


def test_retrain_in_a_worker_thread_beside_observe():
    import threading

    det = IsolationForestDetector(config(auto_retrain=False))
    C.feed(det, C.routine_traffic("a", 40))
    errors: list[BaseException] = []

    def work():
        try:
            for _ in range(5):
                det.retrain(det.needs_retrain() or ["a"])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    for k in range(30):  # new agents keep arriving while models are fitted
        C.feed(det, C.routine_traffic(f"n{k}", 2, start_ns=C.T0 + (10**5 + k * 10**4) * C.S))
    t.join()
    assert errors == []
    assert det.agent_states()["a"] == "active"
