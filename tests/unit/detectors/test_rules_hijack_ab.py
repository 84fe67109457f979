"""A/B: the rule engine, hijack and new_tool against main's (frozen in tests/helpers/*_main.py).

Same traffic through both: findings (every field, in order) after every batch, and snapshots byte
for byte, on the bench's fleet workload (through the real normaliser) and on random rule-heavy and
hijack-heavy traffic (labels, mixed-case destinations, injection scores, TTL gaps, tight caps,
shuffled and late batches); a state saved mid-stream by either restores in the other.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.helpers import hijack_main, new_tool_main, rules_engine_main
from toolwatch.collector import otlp
from toolwatch.collector.normalize import Normalizer
from toolwatch.collector.rules_cli import default_rules_text
from toolwatch.detectors.capabilities import CapabilityMap
from toolwatch.detectors.events import Batch, ToolCall
from toolwatch.detectors.hijack import HijackConfig, HijackDetector
from toolwatch.detectors.new_tool import NewToolConfig, NewToolDetector
from toolwatch.detectors.rules import RuleEngine, RuleEngineConfig, load_rule_files

import rules_workload as W  # noqa: E402  (tests/unit/detectors is on sys.path via conftest)

ROOT = Path(__file__).resolve().parents[3]
FILES = [(default_rules_text(), "default.yaml"), (W.EXTRA_RULES, "extra.yaml")]
RULESETS = {"default": FILES[:1], "extra": FILES}
"""The shipped rules alone (a destructive tool's plan then has a session guard), and with rules that
read the session and call fields no guard covers."""


def _fleet_calls(n: int = 24_000, batch: int = 500) -> list[ToolCall]:
    spec = importlib.util.spec_from_file_location("bench_workloads_ab", ROOT / "bench" / "workloads.py")
    wl = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = wl  # dataclasses look their module up while the class is built
    spec.loader.exec_module(wl)
    norm = Normalizer()
    calls: list[ToolCall] = []
    for body in wl.bodies("fleet", n, batch, anomaly_rate=0.01, rate=2_000.0):
        calls += norm.normalize(otlp.decode_export(body, otlp.PROTOBUF).request).calls
    return calls


@pytest.fixture(scope="module")
def fleet() -> list[ToolCall]:
    return _fleet_calls()


def _fleet_batches(calls: list[ToolCall], seed: int) -> Iterator[Batch]:
    rnd = random.Random(seed)
    i = 0
    while i < len(calls):
        chunk = calls[i:i + rnd.choice([1, 7, 100, 500, 1200])]
        i += len(chunk)
        yield Batch(calls=list(chunk), watermark_ns=chunk[-1].time_ns if rnd.random() < 0.8 else 0)


def _hijack_batches(seed: int, n: int = 6_000) -> Iterator[Batch]:
    """Few agents and sessions, instructions, scores, mixed-case destinations, TTL gaps, late batches."""
    rnd = random.Random(seed)
    t = 10**18
    tools = W.TOOLS + [("crm", "list_accounts"), ("shell", "build")]
    dests = ["A.example", "a.example", "https://B.example/x", "c.example", "x@D.example", "e.example:8080"]
    left = n
    while left > 0:
        calls = []
        for _ in range(min(left, rnd.choice([1, 3, 40, 300]))):
            t += rnd.choice([0, 1, 10, 1000, 30_000]) * 1_000_000
            if rnd.random() < 0.003:
                t += 2 * 3600 * 10**9  # beyond the session TTL
            server, tool = rnd.choice(tools)
            labels = tuple(rnd.sample(["instructions", "secret", "url"], rnd.randrange(1, 3))) if rnd.random() < 0.08 else ()
            calls.append(ToolCall(
                time_ns=t, agent_id=f"a{rnd.randrange(4)}", server=server, tool=tool,
                session_id=f"s{rnd.randrange(10)}", span_id=rnd.choice(["", f"sp{left}"]), trace_id=f"tr{left % 5}",
                result_labels=labels, result_injection_score=rnd.choice([0.0, 0.0, 0.0, 0.3, 0.6, 0.9]),
                destinations=tuple(rnd.sample(dests, rnd.randrange(1, 4))) if rnd.random() < 0.3 else ()))
            left -= 1
        if rnd.random() < 0.1:
            rnd.shuffle(calls)
        yield Batch(calls=calls, watermark_ns=rnd.choice([0, t]))


def _dump(det: Any) -> str:
    return json.dumps(det.snapshot(), sort_keys=True)


def _run_pair(new: Any, old: Any, batches: Iterator[Batch], seed: int,
              fresh: Callable[[], tuple[Any, Any]]) -> int:
    """Both detectors see every batch; findings must match after each. Now and then the state is
    swapped across: new restores old's snapshot and old restores new's, and they go on."""
    rnd = random.Random(seed)
    found = 0
    for batch in batches:
        got = [f.to_dict() for f in new.observe(Batch(list(batch.calls), list(batch.listings), batch.watermark_ns))]
        want = [f.to_dict() for f in old.observe(Batch(list(batch.calls), list(batch.listings), batch.watermark_ns))]
        assert got == want
        found += len(got)
        if rnd.random() < 0.05:
            assert _dump(new) == _dump(old)
            s_new, s_old = json.loads(_dump(new)), json.loads(_dump(old))
            new, old = fresh()
            new.restore(s_old)
            old.restore(s_new)
    assert _dump(new) == _dump(old)
    return found


RULE_CONFIGS = {**W.CONFIGS, "fleet_tight": {"max_sessions": 50, "max_destinations": 4, "max_groups": 20,
                                             "destination_warmup_calls": 2, "session_ttl_s": 1}}


def _rule_pair(cfg: dict[str, Any], files: str = "extra") -> tuple[Any, Any]:
    ruleset = load_rule_files(RULESETS[files])
    caps_new, caps_old = CapabilityMap(), CapabilityMap()
    new = RuleEngine(ruleset, caps_new, RuleEngineConfig(**cfg))
    old = rules_engine_main.RuleEngine(ruleset, caps_old, rules_engine_main.RuleEngineConfig(**cfg))
    return new, old


@pytest.mark.parametrize("files", sorted(RULESETS))
@pytest.mark.parametrize("config", sorted(RULE_CONFIGS))
def test_rules_match_main_on_fleet_traffic(fleet: list[ToolCall], config: str, files: str) -> None:
    cfg = RULE_CONFIGS[config]
    new, old = _rule_pair(cfg, files)
    found = _run_pair(new, old, _fleet_batches(fleet, 1), 2, lambda: _rule_pair(cfg, files))
    assert found > 0


@pytest.mark.parametrize("files", sorted(RULESETS))
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("config", sorted(RULE_CONFIGS))
def test_rules_match_main_on_random_traffic(seed: int, config: str, files: str) -> None:
    cfg = RULE_CONFIGS[config]
    new, old = _rule_pair(cfg, files)
    found = _run_pair(new, old, W.batches(seed, 120), seed, lambda: _rule_pair(cfg, files))
    assert found > 20


def test_rules_one_call_at_a_time_matches_main() -> None:
    new, old = _rule_pair({"destination_warmup_calls": 1, "max_destinations": 3})
    for batch in W.batches(5, 30):
        for call in sorted(batch.calls, key=lambda c: c.time_ns):
            assert [f.to_dict() for f in new.observe_call(call)] == [f.to_dict() for f in old.observe_call(call)]
            assert new.matching_rules(call) == old.matching_rules(call)
    assert _dump(new) == _dump(old)


HIJACK_CONFIGS = [
    {},
    {"arm_scope": "session", "window_calls": 3},
    {"session_kind": "agent", "warmup_sessions": 0, "weak_injection_score": 0.0},
    {"max_items_per_kind": 2, "max_sessions_per_agent": 3, "session_ttl_s": 20, "warmup_sessions": 1},
]


def _hijack_pair(cfg: dict[str, Any]) -> tuple[Any, Any]:
    return (HijackDetector(HijackConfig(**cfg), CapabilityMap()),
            hijack_main.HijackDetector(hijack_main.HijackConfig(**cfg), CapabilityMap()))


@pytest.mark.parametrize("cfg", HIJACK_CONFIGS)
def test_hijack_matches_main_on_fleet_traffic(fleet: list[ToolCall], cfg: dict[str, Any]) -> None:
    new, old = _hijack_pair(cfg)
    _run_pair(new, old, _fleet_batches(fleet, 3), 4, lambda: _hijack_pair(cfg))


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("cfg", HIJACK_CONFIGS)
def test_hijack_matches_main_on_random_traffic(seed: int, cfg: dict[str, Any]) -> None:
    new, old = _hijack_pair(cfg)
    found = _run_pair(new, old, _hijack_batches(seed), seed, lambda: _hijack_pair(cfg))
    assert found > 10


NEW_TOOL_CONFIGS = [{}, {"min_calls": 3, "max_tools": 4}, {"min_calls": 0}]


def _new_tool_pair(cfg: dict[str, Any]) -> tuple[Any, Any]:
    return NewToolDetector(NewToolConfig(**cfg)), new_tool_main.NewToolDetector(new_tool_main.NewToolConfig(**cfg))


@pytest.mark.parametrize("cfg", NEW_TOOL_CONFIGS)
def test_new_tool_matches_main_on_fleet_traffic(fleet: list[ToolCall], cfg: dict[str, Any]) -> None:
    new, old = _new_tool_pair(cfg)
    assert _run_pair(new, old, _fleet_batches(fleet, 5), 6, lambda: _new_tool_pair(cfg)) > 0


def _with_new_tools(batches: Iterator[Batch], seed: int) -> Iterator[Batch]:
    """Random traffic where, now and then, an agent calls a tool none has called before (twice or
    more in one batch, sometimes)."""
    rnd = random.Random(seed)
    for batch in batches:
        # A new call, not ``c.tool = ...``: a call's ``token`` is set when it is built.
        batch.calls = [dataclasses.replace(c, tool=f"fresh{rnd.randrange(40)}") if rnd.random() < 0.01 else c
                       for c in batch.calls]
        yield batch


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("cfg", NEW_TOOL_CONFIGS)
def test_new_tool_matches_main_on_random_traffic(seed: int, cfg: dict[str, Any]) -> None:
    new, old = _new_tool_pair(cfg)
    assert _run_pair(new, old, _with_new_tools(W.batches(seed, 150), seed), seed, lambda: _new_tool_pair(cfg)) > 5
