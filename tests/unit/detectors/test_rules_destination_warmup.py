"""Rules: ``destinations.new`` waits for a per-agent destination warm-up, and
``prev.result.injection_score`` separates scored injections from merely labelled ones."""

from __future__ import annotations

import json

import pytest

from toolwatch.collector.config import Config
from toolwatch.collector.detector_registry import build_detectors
from toolwatch.detectors.events import Batch, ToolCall
from toolwatch.detectors.rules import RuleEngine, RuleEngineConfig
from toolwatch.detectors.rules.loader import load_rules

RULES = """
- rule: any_new_destination
  desc: test
  condition: destinations.new exists
  priority: warning
"""


def engine(warmup: int) -> RuleEngine:
    return RuleEngine(load_rules(RULES, "test.yaml"), config=RuleEngineConfig(destination_warmup_calls=warmup))


def fetch(i: int, dest: str, agent: str = "a1") -> ToolCall:
    return ToolCall(time_ns=i, agent_id=agent, tool="fetch", server="web", session_id=f"s{i}", span_id=f"r{i}",
                    destinations=(dest,))


def test_no_new_destination_during_warm_up_then_new_ones_fire() -> None:
    eng = engine(3)
    fired = [bool(eng.observe(Batch(calls=[fetch(i, f"d{i}.example")]))) for i in range(5)]
    assert fired == [False, False, False, True, True]
    # near miss: a known destination after warm-up does not fire
    assert eng.observe(Batch(calls=[fetch(9, "d0.example")])) == []
    # warm-up is per agent
    assert eng.observe(Batch(calls=[fetch(10, "z.example", agent="a2")])) == []


def test_warm_up_zero_keeps_the_old_behaviour_and_state_round_trips() -> None:
    assert engine(0).observe(Batch(calls=[fetch(0, "x.example")]))
    eng = engine(2)
    eng.observe(Batch(calls=[fetch(0, "a.example"), fetch(1, "b.example")]))
    fresh = engine(2)
    fresh.restore(json.loads(json.dumps(eng.snapshot())))
    assert fresh.observe(Batch(calls=[fetch(2, "c.example")]))


def test_config_rejects_a_negative_warm_up() -> None:
    with pytest.raises(ValueError, match="destination_warmup_calls"):
        RuleEngineConfig(destination_warmup_calls=-1).validate()


def test_daemon_default_rules_page_only_on_scored_injections() -> None:
    rules = next(d for d in build_detectors(Config()) if d.name == "rules")

    def after(score: float, session: str) -> list[str]:
        page = ToolCall(time_ns=1, agent_id="a1", tool="fetch", server="web", session_id=session, span_id=f"{session}p",
                        result_labels=("instructions",), result_injection_score=score)
        send = ToolCall(time_ns=2, agent_id="a1", tool="send_email", server="gmail", session_id=session,
                        span_id=f"{session}s", destinations=("x.example",))
        found = rules.observe(Batch(calls=[page, send]))
        return sorted(f"{f.evidence['rule']}:{f.severity}" for f in found if "instructions" in f.evidence["rule"])

    assert after(0.9, "a") == ["outbound_after_injected_instructions:critical"]
    assert after(0.0, "b") == ["outbound_after_unscored_instructions:low"]
