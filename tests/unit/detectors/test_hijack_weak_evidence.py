"""Hijack: a result labelled instructions but scored low by the injection scanner (a README
addressing its reader) is weak evidence: findings after it are low; a scored one is unchanged."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from toolwatch.detectors.events import Batch, Finding, ToolCall
from toolwatch.detectors.hijack import HijackConfig, HijackDetector

_spans = itertools.count(1)
T0 = 1_700_000_000_000_000_000


def call(server: str, tool: str, t: float, **kw: Any) -> ToolCall:
    kw.setdefault("agent_id", "agent-1")
    kw.setdefault("session_id", "s1")
    kw.setdefault("span_id", f"w{next(_spans):04d}")
    for key in ("result_labels", "destinations"):
        if key in kw:
            kw[key] = tuple(kw[key])
    return ToolCall(time_ns=T0 + int(t * 1e9), server=server, tool=tool, **kw)


def trained(**conf: Any) -> HijackDetector:
    det = HijackDetector(HijackConfig(**conf))
    for i in range(3):
        sid = f"train{i}"
        det.observe(Batch(calls=[call("web", "fetch", i * 10, session_id=sid, destinations=["docs.example"]),
                                 call("notes", "append_note", i * 10 + 1, session_id=sid)]))
    return det


def after_instructions(det: HijackDetector, score: float, nxt: ToolCall) -> list[Finding]:
    page = call("web", "fetch", 100, session_id="s9", destinations=["docs.example"], result_labels=["instructions"],
                result_injection_score=score)
    nxt.session_id = "s9"
    return det.observe(Batch(calls=[page, nxt]))


@pytest.mark.parametrize("score, nxt, severity", [
    # outbound + never used in this kind of session
    (0.9, call("gmail", "send_email", 105, destinations=["evil.example"]), "critical"),
    (0.0, call("gmail", "send_email", 105, destinations=["evil.example"]), "low"),
    (0.0, call("gmail", "send_email", 105, destinations=["docs.example"]), "low"),
    # unfamiliar tool only
    (0.9, call("shell", "list", 105), "medium"),
    (0.2, call("shell", "list", 105), "low"),
    # the boundary: exactly the weak threshold is not weak
    (0.5, call("shell", "list", 105), "medium"),
    (0.49, call("shell", "list", 105), "low"),
])
def test_weak_injection_makes_findings_low(score: float, nxt: ToolCall, severity: str) -> None:
    [f] = after_instructions(trained(), score, nxt)
    assert f.severity == severity
    assert f.evidence["weak_evidence"] is (score < 0.5) and f.evidence["injection_score"] == score


def test_weak_injection_score_zero_turns_the_weighing_off() -> None:
    [f] = after_instructions(trained(weak_injection_score=0.0), 0.0,
                             call("gmail", "send_email", 105, destinations=["evil.example"]))
    assert f.severity == "critical" and f.evidence["weak_evidence"] is False


def test_armed_score_survives_snapshot_and_old_states_default_to_strong() -> None:
    det = trained()
    det.observe(Batch(calls=[call("web", "fetch", 100, session_id="s9", result_labels=["instructions"],
                                  result_injection_score=0.1)]))
    data = json.loads(json.dumps(det.snapshot()))
    fresh = HijackDetector()
    fresh.restore(data)
    [f] = fresh.observe(Batch(calls=[call("shell", "list", 105, session_id="s9")]))
    assert f.severity == "low"
    # a state saved before the score was kept (4-item armed entries) counts as strong evidence
    # (arm_scope: agent keeps the armed result on the agent, not on the MCP session)
    armed = [entry["armed"] for entry in data["agents"].values() if entry.get("armed") is not None]
    assert len(armed) == 1 and armed[0][4] == 0.1
    del armed[0][4:]
    old = HijackDetector()
    old.restore(data)
    [g] = old.observe(Batch(calls=[call("shell", "list", 105, session_id="s9")]))
    assert g.severity == "medium"


def test_weak_injection_score_is_validated() -> None:
    with pytest.raises(ValueError, match="weak_injection_score"):
        HijackConfig(weak_injection_score=1.5).validate()
