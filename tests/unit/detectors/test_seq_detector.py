"""SequenceDetector: cold start, findings and their evidence, freeze, fleet prior, session length."""

from __future__ import annotations

import json

import pytest

import conformance as C
from toolwatch.detectors.events import Batch
from toolwatch.detectors.sequence_detector import SequenceConfig, SequenceDetector

CFG = SequenceConfig(min_calls=60, min_sessions=8)


def probe(det, agent, tokens, start=C.T0 + 10**6 * C.S, **extra):
    calls = C.session_calls(agent, f"{agent}-probe{start}", tokens, start, **extra)
    return det.observe(Batch(calls=calls, watermark_ns=calls[-1].time_ns)), calls


def test_learning_until_both_calls_and_sessions_are_enough():
    det = SequenceDetector(SequenceConfig(min_calls=60, min_sessions=20))
    C.feed(det, C.routine_traffic("a", 12))  # ~70 calls but 12 sessions
    assert det.agent_states() == {"a": "learning"}
    found, _ = probe(det, "a", ["fs/list_dir", "evil/exfiltrate"])
    assert found == []  # learning, no fleet prior: silent
    C.feed(det, C.routine_traffic("a", 10, start_ns=C.T0 + 10**5 * C.S))
    assert det.agent_states() == {"a": "active"}


def test_unseen_tool_finding_explains_itself():
    det = SequenceDetector(CFG)
    C.feed(det, C.routine_traffic("a", 30))
    found, calls = probe(det, "a", ["fs/list_dir", "evil/exfiltrate"])
    assert [f.tool for f in found] == ["exfiltrate"]
    f = found[0]
    assert f.span_ids == (calls[1].span_id,) and f.detector == "sequence"
    ev = f.evidence
    assert ev["previous"] == "fs/list_dir" and ev["expected_next"][0] == "fs/read_file"
    assert ev["unseen_tool"] is True and ev["basis"] == "agent"
    e = ev["explanation"][0]
    assert e["feature"] == "surprisal" and e["observed"] > CFG.threshold_bits > e["baseline"]
    json.dumps(f.to_dict())


def test_habits_raise_nothing():
    det = SequenceDetector(CFG)
    C.feed(det, C.routine_traffic("a", 30))
    found = C.feed(det, C.routine_traffic("a", 20, start_ns=C.T0 + 10**6 * C.S, seed=5))
    assert found == []


def test_threshold_is_lower_right_after_an_injected_result():
    det = SequenceDetector(SequenceConfig(min_calls=60, min_sessions=8, threshold_bits=30.0,
                                          after_instructions_bits=5.0))
    C.feed(det, C.routine_traffic("a", 30))
    # list_dir -> git/commit and list_dir -> run_tests: known tools, never in that order.
    found, _ = probe(det, "a", ["fs/list_dir", "git/commit"])
    assert found == []
    calls = C.session_calls("a", "a-inj", ["fs/list_dir", "shell/run_tests"], C.T0 + 10**7 * C.S)
    calls[0].result_labels = ("instructions",)
    found = det.observe(Batch(calls=calls))
    assert len(found) == 1 and found[0].evidence["after_instructions"] and found[0].severity == "high"


def test_flagged_calls_are_not_learned_and_frozen_agents_learn_nothing():
    det = SequenceDetector(CFG)
    C.feed(det, C.routine_traffic("a", 30))
    for k in range(3):  # the same attack again and again stays an anomaly
        found, _ = probe(det, "a", ["fs/list_dir", "evil/exfiltrate"], start=C.T0 + (10**6 + k * 10**4) * C.S)
        assert len(found) == 1
    det.freeze("a")
    before = json.dumps(det.snapshot_agent("a")["model"], sort_keys=True)
    C.feed(det, C.routine_traffic("a", 5, start_ns=C.T0 + 10**7 * C.S))
    assert json.dumps(det.snapshot_agent("a")["model"], sort_keys=True) == before
    det.unfreeze("a")
    assert det.agent_states()["a"] == "active"


def test_fleet_prior_lets_a_new_agent_with_little_data_detect():
    det = SequenceDetector(CFG)
    for name in ("old1", "old2"):
        C.feed(det, C.routine_traffic(name, 40, seed=hash(name) % 7))
    # The newcomer has two sessions only: learning, yet its peers' habits cover its tools.
    C.feed(det, C.routine_traffic("new", 2, start_ns=C.T0 + 10**5 * C.S))
    assert det.agent_states()["new"] == "learning"
    found, _ = probe(det, "new", ["fs/list_dir", "fs/read_file", "evil/exfiltrate"])
    assert [f.tool for f in found] == ["exfiltrate"]
    assert found[0].evidence["basis"] == "fleet_prior" and found[0].evidence["state"] == "learning"
    normal = C.feed(det, C.routine_traffic("new", 5, start_ns=C.T0 + 10**7 * C.S, seed=3))
    assert normal == []
    off = SequenceDetector(SequenceConfig(min_calls=60, min_sessions=8, use_fleet_prior=False))
    for name in ("old1", "old2"):
        C.feed(off, C.routine_traffic(name, 40))
    C.feed(off, C.routine_traffic("new", 2, start_ns=C.T0 + 10**5 * C.S))
    assert probe(off, "new", ["fs/list_dir", "evil/exfiltrate"])[0] == []


def test_unusually_long_session_is_reported_once():
    det = SequenceDetector(SequenceConfig(min_calls=60, min_sessions=8, length_floor=10, session_idle_s=60))
    C.feed(det, C.routine_traffic("a", 30))
    burst = ["fs/read_file"] * 40
    calls = C.session_calls("a", "a-burst", ["fs/list_dir"] + burst, C.T0 + 10**6 * C.S, gap_s=0.1)
    found = det.observe(Batch(calls=calls))
    lengths = [f for f in found if f.dedup_key.endswith(":length")]
    assert len(lengths) == 1
    assert lengths[0].evidence["explanation"][0]["feature"] == "session_length"


@pytest.mark.parametrize("field,value", [
    ("min_calls", -1), ("threshold_bits", 0), ("length_floor", 0), ("prior_min_containment", 1.5),
    ("max_open_sessions", 0),
])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SequenceDetector(SequenceConfig(**{field: value}))
