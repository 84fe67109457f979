"""A/B: the rule engine, hijack and new_tool against main's (frozen in tests/helpers/*_main.py).

Same traffic through both: findings (every field, in order) after every batch, and snapshots byte
for byte, on the bench's fleet workload (through the real normaliser) and on random rule-heavy and
hijack-heavy traffic (labels, mixed-case destinations, injection scores, TTL gaps, tight caps,
shuffled and late batches), and on busy traffic with sixty rules and tools whose tokens collide;
a state saved mid-stream by either restores in the other.
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any, Callable, Iterator

import pytest

from tests.helpers import hijack_main, new_tool_main, rules_engine_main
from tests.helpers.bench_workloads import fleet_calls
from toolwatch.collector.rules_cli import default_rules_text
from toolwatch.detectors.capabilities import CapabilityMap
from toolwatch.detectors.events import Batch, ToolCall
from toolwatch.detectors.hijack import HijackConfig, HijackDetector
from toolwatch.detectors.new_tool import NewToolConfig, NewToolDetector
from toolwatch.detectors.rules import RuleEngine, RuleEngineConfig, load_rule_files

import rules_workload as W  # noqa: E402  (tests/unit/detectors is on sys.path via conftest)

FILES = [(default_rules_text(), "default.yaml"), (W.EXTRA_RULES, "extra.yaml")]
RULESETS = {"default": FILES[:1], "extra": FILES}
"""The shipped rules alone (a destructive tool's plan then has a session guard), and with rules that
read the session and call fields no guard covers."""


def _fleet_calls(n: int = 24_000, batch: int = 500) -> list[ToolCall]:
    return fleet_calls(n, batch, anomaly_rate=0.01, rate=2_000.0)


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


# --- plans looked up by token, session keys found by scanning for misses, many rules --------------
COLLIDING_TOOLS = [("a", "b/c"), ("a/b", "c"), ("", "a/b/c"), ("web", "fetch"), ("", "web/fetch"),
                   ("gmail", "send_email"), ("", "gmail/send_email"), ("vault", "read_secret")]
"""Tools that share a token (``server/tool``) two or three ways; a batch holds them together."""

COLLIDING_RULES = """
- rule: server_a_b
  condition: server = "a/b" and args.labels exists
  priority: low
- rule: bare_web_fetch
  condition: server = "" and tool = "web/fetch" and args.labels exists
  priority: low
- rule: deep_token_not_a
  condition: token = "a/b/c" and server != a and args.labels exists
  priority: low
- rule: any_a_tool
  condition: token startswith "a/" and args.labels exists
  priority: low
"""


def _many_rules(n: int = 60, seed: int = 7) -> str:
    """``n`` rules over call, session and previous-call fields (every fifth only feeds the
    correlations), and correlations of each type over them."""
    rnd = random.Random(seed)
    tools = [t for _, t in W.TOOLS + COLLIDING_TOOLS]
    servers = sorted({s for s, _ in W.TOOLS + COLLIDING_TOOLS if s})
    shapes = [
        lambda: f'tool in ("{rnd.choice(tools)}", "{rnd.choice(tools)}") and args.labels intersects ({rnd.choice(W.ARGS_LABELS)})',
        lambda: f'server = "{rnd.choice(servers)}" and result.labels contains {rnd.choice(W.RESULT_LABELS)}',
        lambda: f'prev.tool = "{rnd.choice(tools)}" and session.calls >= {rnd.randrange(1, 6)}',
        lambda: "destinations.new exists and capabilities contains sends_out",
        lambda: f'session.result.labels contains {rnd.choice(W.RESULT_LABELS)} and tool = "{rnd.choice(tools)}"',
        lambda: f'args.bytes > {rnd.randrange(100, 600)} or prev.server = "{rnd.choice(servers)}"',
        lambda: f'not error exists and destinations endswith example and tool startswith {rnd.choice("sdfrhpqu")}',
        lambda: f'session.servers contains "{rnd.choice(servers)}" and prev.capabilities contains reads_sensitive',
        lambda: f'prev.result.labels intersects ({rnd.choice(W.RESULT_LABELS)}) and result.fingerprints exists',
    ]
    out = []
    for i in range(n):
        generate = "false" if i % 5 == 0 else "true"
        cond = shapes[i % len(shapes)]()
        out.append(f"- rule: many_{i}\n  condition: '{cond}'\n  output: \"%rule %token %destinations.new\"\n"
                   f"  priority: low\n  generate: {generate}\n")
    for i, kind in enumerate(["event_count", "value_count", "temporal_ordered"] * 3):
        rules = sorted(rnd.sample(range(n), 2 if kind != "temporal_ordered" else 3))
        cond = {"event_count": "  condition: {gte: 3}\n", "value_count": "  condition: {field: tool, gte: 2}\n",
                "temporal_ordered": ""}[kind]
        out.append(f"- correlation: many_corr_{i}\n  type: {kind}\n  rules: [{', '.join(f'many_{r}' for r in rules)}]\n"
                   f"  group-by: [{rnd.choice(['agent_id', 'agent_id, session_id', 'tool'])}]\n  timespan: 1m\n{cond}"
                   f"  priority: low\n")
    return "".join(out)


def _busy_batches(seed: int, n: int = 40_000) -> Iterator[Batch]:
    """Many agents and sessions (so session keys keep missing), colliding tokens in every batch,
    batches of 1 to 3,000 calls, some shuffled."""
    rnd = random.Random(seed)
    t = 10**18
    tools = W.TOOLS + COLLIDING_TOOLS
    left = n
    while left > 0:
        calls = []
        for i in range(min(left, rnd.choice([1, 40, 700, 3000]))):
            t += rnd.choice([0, 1, 100, 1000]) * 1_000_000
            server, tool = rnd.choice(tools)
            c = ToolCall(time_ns=t, agent_id=f"ag{rnd.randrange(40)}", tool=tool, server=server,
                         session_id=f"s{rnd.randrange(30)}", span_id=f"sp{left}-{i}", args_bytes=rnd.randrange(600),
                         error_type=rnd.choice(["", "", "timeout"]),
                         args_labels=tuple(rnd.sample(W.ARGS_LABELS, rnd.randrange(0, 3))),
                         result_labels=tuple(rnd.sample(W.RESULT_LABELS, rnd.randrange(0, 2))),
                         result_fingerprints=("fp",) if rnd.random() < 0.2 else (),
                         destinations=tuple(rnd.sample(W.DESTINATIONS, rnd.randrange(0, 3))))
            calls.append(c)
        left -= len(calls)
        if rnd.random() < 0.2:
            rnd.shuffle(calls)
        yield Batch(calls=calls, watermark_ns=rnd.choice([0, t]))


def _rules_pair_from(texts: list[tuple[str, str]], cfg: dict[str, Any]) -> tuple[Any, Any]:
    ruleset = load_rule_files(texts)
    new = RuleEngine(ruleset, CapabilityMap(), RuleEngineConfig(**cfg))
    old = rules_engine_main.RuleEngine(ruleset, CapabilityMap(), rules_engine_main.RuleEngineConfig(**cfg))
    return new, old


def test_colliding_tokens_get_their_own_plans() -> None:
    """``a``+``b/c``, ``a/b``+``c`` and ``""``+``a/b/c`` share the token ``a/b/c``: each call still gets
    its own tool's rules, as in main."""
    texts = FILES + [(COLLIDING_RULES, "colliding.yaml")]
    new, old = _rules_pair_from(texts, {"destination_warmup_calls": 2})
    fired: set[str] = set()
    for batch in _busy_batches(3, 8_000):
        got = [f.to_dict() for f in new.observe(Batch(list(batch.calls), [], batch.watermark_ns))]
        assert got == [f.to_dict() for f in old.observe(Batch(list(batch.calls), [], batch.watermark_ns))]
        fired |= {f["evidence"]["rule"] for f in got}
    assert {"server_a_b", "bare_web_fetch", "deep_token_not_a", "any_a_tool"} <= fired
    assert _dump(new) == _dump(old)


@pytest.mark.parametrize("cached_keys", [3, 20_000])
@pytest.mark.parametrize("config", sorted(RULE_CONFIGS))
def test_many_rules_on_busy_traffic_match_main(config: str, cached_keys: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sixty rules and nine correlations, many sessions; with a tiny key cache the session keys are
    rebuilt (and the cache cleared) in the middle of batches."""
    from toolwatch.detectors.rules import context
    monkeypatch.setattr(context, "_MAX_CACHED_KEYS", cached_keys)
    texts = FILES + [(_many_rules(), "many.yaml"), (COLLIDING_RULES, "colliding.yaml")]
    cfg = RULE_CONFIGS[config]
    new, old = _rules_pair_from(texts, cfg)
    found = _run_pair(new, old, _busy_batches(11, 8_000), 5, lambda: _rules_pair_from(texts, cfg))
    assert found > 1_000
