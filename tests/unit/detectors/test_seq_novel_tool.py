"""A tool an agent first meets while it is scored (issue #4): one alert per agent and tool, learned
after ``learn_novel_sessions`` sessions that ended clean, never taught by attack-like sessions.

The mechanism: an unseen tool's surprisal is ``log2((c(p)+alpha)(N+beta)(V+1)/(alpha*beta))``, which
grows with the model's mass ``N``; flagged calls are not learned, so once above the threshold such a
tool stayed flagged on every call for good. ``tests/helpers/sequence_main.py`` (the detector before
the rule) shows it on the same traffic.
"""

from __future__ import annotations

import json

import conformance as C
from tests.helpers import sequence_main
from toolwatch.detectors.events import Batch
from toolwatch.detectors.sequence_detector import SequenceConfig, SequenceDetector

CFG = dict(min_calls=60, min_sessions=8, learn_novel_sessions=4)
NEW = "fs/stat"


def with_new_tool(agent: str, n: int, start_ns: int, every: int = 1, **extra) -> list:
    """Routine sessions where ``fs/stat`` now follows ``fs/list_dir`` in every ``every``-th session."""
    calls = []
    for k in range(n):
        toks = ["fs/list_dir"] + ([NEW] if k % every == 0 else []) + ["fs/read_file", "fs/write_file",
                                                                       "shell/run_tests"]
        calls += C.session_calls(agent, f"{agent}-n{start_ns}-{k}", toks, start_ns + k * 600 * C.S, **extra)
    return calls


def flagged_new(found) -> list:
    return [f for f in found if f.server + "/" + f.tool == NEW]


def trained(det):
    C.feed(det, C.routine_traffic("a", 30))
    assert det.agent_states()["a"] == "active"
    return det


def test_old_detector_flags_a_new_routine_tool_for_good():
    det = trained(sequence_main.SequenceDetector(sequence_main.SequenceConfig(min_calls=60, min_sessions=8)))
    found = flagged_new(C.feed(det, with_new_tool("a", 30, C.T0 + 10**6 * C.S)))
    assert len(found) == 30  # every call, and the surprise only grows
    assert found[-1].score > found[0].score


def test_new_routine_tool_is_one_alert_then_learned_after_clean_sessions():
    det = trained(SequenceDetector(SequenceConfig(**CFG)))
    found = C.feed(det, with_new_tool("a", 30, C.T0 + 10**6 * C.S))
    new = flagged_new(found)
    # A session vouches once it has ended clean: sessions start 600 s apart and end after 1800 s
    # idle, so session k has ended when session k+4 starts. Sessions 0-3 have ended by session 7,
    # whose call of the tool learns it.
    assert [f.session_id for f in new] == [f"a-n{C.T0 + 10**6 * C.S}-{k}" for k in range(7)]
    assert {f.dedup_key for f in new} == {f"sequence:a:novel:{NEW}"}  # grouped into one alert
    assert all(f.evidence["unseen_tool"] for f in new)
    assert [f.evidence["clean_sessions"] for f in new] == [0, 0, 0, 0, 1, 2, 3]
    assert new[0].evidence["learned_after_sessions"] == 4
    assert found == new  # learning it raised nothing else
    assert det.snapshot_agent("a")["model"]["bi"]["fs/list_dir"][NEW] >= 4
    json.dumps(new[0].to_dict())


def test_sessions_with_other_findings_or_injections_teach_nothing():
    # At 7.5 bits list_dir -> commit (8.0 bits after the routine) is a finding.
    det = trained(SequenceDetector(SequenceConfig(**CFG, threshold_bits=7.5)))
    # Each session also makes a known call out of place (list_dir -> commit): it vouches for nothing.
    for k in range(12):
        calls = C.session_calls("a", f"a-bad{k}", ["fs/list_dir", NEW, "fs/list_dir", "git/commit"],
                                C.T0 + (10**6 + k * 600) * C.S)
        found = det.observe(Batch(calls=calls))
        assert any(f.dedup_key == f"sequence:a:a-bad{k}" for f in found)  # another finding
        assert flagged_new(found), k  # never learned from such sessions
    # After an injected result: flagged at the lower threshold, and not counted either.
    for k in range(12):
        calls = C.session_calls("a", f"a-inj{k}", ["fs/list_dir", NEW], C.T0 + (10**7 + k * 600) * C.S)
        calls[0].result_labels = ("instructions",)
        assert flagged_new(det.observe(Batch(calls=calls))), k


def test_sessions_that_raise_another_finding_after_the_tool_teach_nothing():
    """Found in issue #4: a session counted towards learning a tool while it was still open, so a
    finding it raised later (after the tool had been learned) came too late to take that back. Here
    four sessions call the tool and are still open when a fifth calls it (main's detector learned it
    there); then each of the four makes a known call out of place. None of them ever vouched."""
    det = trained(SequenceDetector(SequenceConfig(**CFG, threshold_bits=7.5)))
    t = C.T0 + 10**6 * C.S
    sessions = [f"a-open{k}" for k in range(5)]
    calls = []
    for k, sid in enumerate(sessions):
        calls += C.session_calls("a", sid, ["fs/list_dir", NEW], t + k * 10 * C.S)
    for k, sid in enumerate(sessions[:4]):  # list_dir -> commit: 8.0 bits, a finding at 7.5
        calls += C.session_calls("a", sid, ["fs/list_dir", "git/commit"], t + (100 + k * 10) * C.S)
    found = det.observe(Batch(calls=calls))
    assert [f.session_id for f in flagged_new(found)] == sessions
    assert sorted(f.dedup_key for f in found if not f.evidence["unseen_tool"]) == [
        f"sequence:a:{sid}" for sid in sessions[:4]]
    assert NEW not in det.snapshot_agent("a")["model"]["uni"]
    # Hours later (all five ended; one of them clean) the tool is still news, and stays so until
    # three more sessions have ended clean.
    later = with_new_tool("a", 8, t + 10**4 * C.S)
    assert len(flagged_new(C.feed(det, later))) == 6  # sessions 0-5; 0-2 have ended by session 6
    assert NEW in det.snapshot_agent("a")["model"]["uni"]


def test_frozen_agents_learn_no_new_tool_and_pending_state_survives_a_snapshot():
    det = trained(SequenceDetector(SequenceConfig(**CFG)))
    C.feed(det, with_new_tool("a", 3, C.T0 + 10**6 * C.S))
    snap = json.loads(json.dumps(det.snapshot_agent("a")))
    restored = SequenceDetector(SequenceConfig(**CFG))
    restored.restore_agent("a", snap)
    det.freeze("a")
    assert len(flagged_new(C.feed(det, with_new_tool("a", 10, C.T0 + 10**7 * C.S)))) == 10
    # Restored: 3 clean sessions remembered (ended: idle since); the 4th is the first new one,
    # which has ended when the 5th new one starts (see above), so 4 new ones are flagged.
    assert len(flagged_new(C.feed(restored, with_new_tool("a", 10, C.T0 + 10**7 * C.S)))) == 4


def test_learning_can_be_switched_off():
    det = trained(SequenceDetector(SequenceConfig(**{**CFG, "learn_novel_sessions": 0})))
    assert len(flagged_new(C.feed(det, with_new_tool("a", 20, C.T0 + 10**6 * C.S)))) == 20
