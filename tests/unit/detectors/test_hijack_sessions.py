"""Hijack detector: what happens right after a result that carried instructions."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest

from toolwatch.detectors.events import Batch, Finding, ToolCall
from toolwatch.detectors.hijack import HijackConfig, HijackDetector

_spans = itertools.count(1)
T0 = 1_700_000_000_000_000_000


def call(server: str, tool: str, t: float = 0.0, **kw: Any) -> ToolCall:
    kw.setdefault("agent_id", "agent-1")
    kw.setdefault("session_id", "s1")
    kw.setdefault("span_id", f"h{next(_spans):04d}")
    if "instructions" in kw.get("result_labels", ()):
        # As the instrumentation does: it labels instructions only at an injection score >= 0.5.
        # (Labelled but unscored results are weak evidence: test_hijack_weak_evidence.py.)
        kw.setdefault("result_injection_score", 0.9)
    for key in ("result_labels", "destinations"):
        if key in kw:
            kw[key] = tuple(kw[key])
    return ToolCall(time_ns=T0 + int(t * 1e9), server=server, tool=tool, **kw)


def run(det: HijackDetector, *calls: ToolCall) -> list[Finding]:
    return det.observe(Batch(calls=list(calls)))


def train(det: HijackDetector, sessions: int = 3) -> None:
    """Ordinary research sessions: fetch a page, take a note."""
    for i in range(sessions):
        sid = f"train{i}"
        run(det, call("web", "fetch", i * 10, session_id=sid, destinations=["docs.example"]),
            call("notes", "append_note", i * 10 + 1, session_id=sid))


def test_outbound_call_right_after_injected_instructions_fires() -> None:
    det = HijackDetector()
    inject = call("web", "fetch", 0, result_labels=["url", "instructions"])
    send = call("gmail", "send_email", 3, destinations=["attacker.example"])
    out = run(det, inject, send)
    assert len(out) == 1
    f = out[0]
    assert f.severity == "high" and f.detector == "hijack"
    assert f.span_ids == (inject.span_id, send.span_id)
    assert f.evidence["instructions_tool"] == "web/fetch" and f.evidence["outbound"] is True
    assert "web/fetch returned instructions" in f.reason


def test_web_result_without_instructions_then_mail_is_fine() -> None:
    det = HijackDetector()
    assert run(det, call("web", "fetch", 0, result_labels=["url"]), call("gmail", "send_email", 3)) == []


def test_unfamiliar_tool_after_instructions_once_warmed_up() -> None:
    det = HijackDetector()
    train(det)
    out = run(det, call("web", "fetch", 100, session_id="x", result_labels=["instructions"]),
              call("filesystem", "read_file", 101, session_id="x"))
    assert len(out) == 1
    assert out[0].severity == "medium"
    assert out[0].evidence["unfamiliar"] == {"tool": "filesystem/read_file", "server": "filesystem"}


def test_familiar_follow_up_after_instructions_is_fine() -> None:
    det = HijackDetector()
    train(det)
    assert run(det, call("web", "fetch", 100, session_id="x", result_labels=["instructions"]),
               call("notes", "append_note", 101, session_id="x")) == []


def test_outbound_to_a_new_destination_is_critical() -> None:
    det = HijackDetector()
    train(det)
    out = run(det, call("web", "fetch", 100, session_id="x", result_labels=["instructions"]),
              call("web", "http_post", 101, session_id="x", destinations=["exfil.example"]))
    assert out[0].severity == "critical"
    assert out[0].evidence["unfamiliar"]["destinations"] == ["exfil.example"]


def test_unfamiliar_needs_warm_up() -> None:
    det = HijackDetector()
    train(det, sessions=2)
    assert run(det, call("web", "fetch", 100, session_id="x", result_labels=["instructions"]),
               call("filesystem", "read_file", 101, session_id="x")) == []


def test_only_the_next_calls_within_the_window_are_judged() -> None:
    det = HijackDetector(HijackConfig(window_calls=2, window_s=60))
    out = run(det, call("web", "fetch", 0, result_labels=["instructions"]),
              call("notes", "append_note", 1), call("notes", "append_note", 2),
              call("gmail", "send_email", 3))
    assert out == []
    late = HijackDetector(HijackConfig(window_s=60))
    assert run(late, call("web", "fetch", 0, result_labels=["instructions"]), call("gmail", "send_email", 61)) == []


def test_high_injection_score_arms_without_label() -> None:
    det = HijackDetector(HijackConfig(injection_score_threshold=0.7))
    out = run(det, call("web", "fetch", 0, result_injection_score=0.9), call("slack", "post_message", 1))
    assert len(out) == 1
    assert run(HijackDetector(), call("web", "fetch", 0, result_injection_score=0.5),
               call("slack", "post_message", 1)) == []


def test_other_sessions_are_armed_by_default_but_not_with_session_scope() -> None:
    # An agent holds one MCP session per server: the injected page arrives on the web server's
    # session and the takeover happens on the mail server's.
    det = HijackDetector()
    (f,) = run(det, call("web", "fetch", 0, result_labels=["instructions"]),
               call("gmail", "send_email", 1, session_id="other"))
    assert f.severity == "high"
    narrow = HijackDetector(HijackConfig(arm_scope="session"))
    assert run(narrow, call("web", "fetch", 0, result_labels=["instructions"]),
               call("gmail", "send_email", 1, session_id="other")) == []


def test_flagged_unfamiliar_call_is_not_learned() -> None:
    det = HijackDetector()
    train(det)
    run(det, call("web", "fetch", 100, session_id="x", result_labels=["instructions"]),
        call("filesystem", "read_file", 101, session_id="x"))
    kinds = dict((k[0], k) for k in det.snapshot_agent("agent-1")["kinds"])
    assert "filesystem/read_file" not in kinds["web/fetch"][2]


def test_snapshot_restore_and_bounds() -> None:
    cfg = HijackConfig(max_sessions_per_agent=5, max_kinds_per_agent=3)
    det = HijackDetector(cfg)
    for i in range(40):
        run(det, call("s", f"t{i % 9}", i, session_id=f"s{i}"))
    state = det.snapshot_agent("agent-1")
    assert len(state["sessions"]) == 5 and len(state["kinds"]) == 3
    run(det, call("web", "fetch", 100, session_id="z", result_labels=["instructions"]))
    clone = HijackDetector(cfg)
    clone.restore(json.loads(json.dumps(det.snapshot())))
    follow = call("gmail", "send_email", 101, session_id="z")
    assert [f.to_dict() for f in run(det, follow)] == [f.to_dict() for f in run(clone, follow)]


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"window_calls": 0}, "hijack.window_calls"),
        ({"session_kind": "tool"}, "hijack.session_kind"),
        ({"injection_score_threshold": 2}, "hijack.injection_score_threshold"),
        ({"windows": 1}, "hijack: unknown key windows"),
        ({"instruction_labels": "instructions"}, "hijack.instruction_labels"),
    ],
)
def test_config_errors_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ValueError, match=re.escape(key)):
        HijackConfig.from_dict(data)


def test_a_session_whose_kind_was_pushed_out_goes_on_armed() -> None:
    """More session kinds than max_kinds_per_agent drop the oldest kind's profile while one of its
    sessions is live; that session's next call raised KeyError, losing the batch for every agent."""
    det = HijackDetector(HijackConfig(max_kinds_per_agent=1))
    inject = call("web", "fetch", 0, session_id="s1", result_labels=["url", "instructions"])
    other = call("notes", "append_note", 1, session_id="s2")  # a new kind: web/fetch's profile goes
    send = call("gmail", "send_email", 2, session_id="s1", destinations=["attacker.example"])
    bystander = call("notes", "append_note", 3, agent_id="agent-2", session_id="b1")
    out = run(det, inject, other)
    assert out == [] and list(det.state_for("agent-1").kinds) == ["notes/append_note"]
    out = run(det, send, bystander)
    assert [(f.severity, f.span_ids) for f in out] == [("high", (inject.span_id, send.span_id))]
    assert "agent-2" in det._state  # the rest of the batch was seen
    # The fast path (nothing armed) meets a pushed-out kind too.
    run(det, call("web", "fetch", 10, session_id="s3"), call("db", "query", 11, session_id="s4"))
    assert run(det, call("web", "fetch", 12, session_id="s3")) == []
    assert "web/fetch" in det.state_for("agent-1").kinds
