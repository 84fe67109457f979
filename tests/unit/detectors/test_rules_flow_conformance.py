"""One conformance suite over the three flow detectors (exfiltration, hijack, rule engine).

Empty input, calls with every optional attribute missing, unseen tools, JSON-safe snapshots that
restore to the same state, per-agent state that moves and drops cleanly.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Callable

import pytest

from toolwatch.detectors.base import Detector
from toolwatch.detectors.events import Batch, ToolCall, ToolDefinition, ToolListing
from toolwatch.detectors.exfiltration import ExfiltrationDetector
from toolwatch.detectors.hijack import HijackDetector
from toolwatch.detectors.rules import RuleEngine, load_rules

DEFAULT_RULES = files("toolwatch.detectors.rules").joinpath("default_rules.yaml").read_text(encoding="utf-8")
FACTORIES: dict[str, Callable[[], Detector]] = {
    "exfiltration": ExfiltrationDetector,
    "hijack": HijackDetector,
    "rules": lambda: RuleEngine(load_rules(DEFAULT_RULES, "default_rules.yaml")),
}
T0 = 1_700_000_000_000_000_000


def traffic() -> list[ToolCall]:
    out = []
    for i in range(30):
        out.append(ToolCall(
            time_ns=T0 + i * 10**9, agent_id=f"a{i % 3}", session_id=f"s{i % 4}", span_id=f"sp{i}",
            server=["web", "vault", "gmail"][i % 3], tool=["fetch", "read_secret", "send_email"][i % 3],
            result_labels=("instructions",) if i % 5 == 0 else ("secret",) if i % 3 == 1 else (),
            result_fingerprints=(f"fp{i}",), args_fingerprints=(f"fp{i - 1}",), destinations=(f"d{i % 4}.example",),
            args_labels=("secret",) if i % 7 == 0 else (), args_bytes=100 + i,
        ))
    return out


@pytest.fixture(params=sorted(FACTORIES))
def make(request) -> Callable[[], Detector]:
    return FACTORIES[request.param]


def test_empty_batch_finds_nothing(make) -> None:
    det = make()
    assert det.observe(Batch()) == []
    assert json.loads(json.dumps(det.snapshot())) is not None


def test_bare_call_with_missing_attributes_does_not_crash(make) -> None:
    det = make()
    det.observe(Batch(calls=[ToolCall(time_ns=0, agent_id="", tool="")]))
    det.observe(Batch(calls=[ToolCall(time_ns=1, agent_id="a", tool="never_seen_tool", server="new-server")]))


def test_listings_alone_are_accepted(make) -> None:
    det = make()
    listing = ToolListing(time_ns=T0, agent_id="a", server="x", tools=(ToolDefinition("t", annotations=["odd"]),))
    assert det.observe(Batch(listings=[listing])) == []


def test_snapshot_restore_gives_identical_future_findings(make) -> None:
    calls = traffic()
    a = make()
    a.observe(Batch(calls=calls[:15]))
    b = make()
    b.restore(json.loads(json.dumps(a.snapshot())))
    assert json.dumps(b.snapshot(), sort_keys=True) == json.dumps(a.snapshot(), sort_keys=True)
    fa, fb = a.observe(Batch(calls=calls[15:])), b.observe(Batch(calls=calls[15:]))
    assert [f.to_dict() for f in fa] == [f.to_dict() for f in fb]


def test_findings_are_complete(make) -> None:
    det = make()
    found = det.observe(Batch(calls=traffic()))
    assert found, "the conformance traffic is built to trigger every detector"
    for f in found:
        assert f.detector == det.name and f.agent_id and f.session_id and f.span_ids and f.reason
        json.dumps(f.to_dict())


def test_per_agent_state_moves_and_drops() -> None:
    for name in ("exfiltration", "hijack"):
        det = FACTORIES[name]()
        det.observe(Batch(calls=traffic()))
        assert sorted(det.agents()) == ["a0", "a1", "a2"]
        moved = FACTORIES[name]()
        moved.restore_agent("a1", json.loads(json.dumps(det.snapshot_agent("a1"))))
        assert moved.agents() == ["a1"]
        det.drop_agent("a1")
        assert "a1" not in det.agents()
