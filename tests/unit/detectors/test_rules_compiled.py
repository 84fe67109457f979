"""The compiled rule engine gives the tree-walking engine's answers.

Golden: findings and snapshots of a seeded, rule-heavy workload (tests/unit/detectors/rules_workload.py)
were recorded from the tree-walking engine before rules were compiled (testdata/rules_golden.json:
count, sha256 of findings + final snapshot, and the first findings in clear so a failure shows what
moved). The other tests check the compiler's parts against the tree on generated calls.
"""

from __future__ import annotations

import hashlib
import json
import random
from itertools import islice
from pathlib import Path
from typing import Iterator

import pytest

from toolwatch.collector.rules_cli import default_rules_text
from toolwatch.detectors.capabilities import CapabilityMap
from toolwatch.detectors.events import ToolCall
from toolwatch.detectors.rules import FIELDS, RuleEngine, RuleEngineConfig, load_rule_files
from toolwatch.detectors.rules.compile import plan_tool, specialise
from toolwatch.detectors.rules.context import ContextLimits, LazyContext, SessionContext
from toolwatch.detectors.rules.fields import DIRECT, EvalContext

import rules_workload as W  # noqa: E402  (tests/unit/detectors is on sys.path via conftest)

GOLDEN = json.loads((Path(__file__).parent / "testdata" / "rules_golden.json").read_text())
FILES = [(default_rules_text(), "default.yaml"), (W.EXTRA_RULES, "extra.yaml")]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_findings_and_snapshot_match_the_tree_walking_engine(name: str) -> None:
    config, seed = name.rsplit("-", 1)
    engine = RuleEngine(load_rule_files(FILES), CapabilityMap(), RuleEngineConfig(**W.CONFIGS[config]))
    found = []
    for batch in W.batches(int(seed)):
        found += [f.to_dict() for f in engine.observe(batch)]
    want = GOLDEN[name]
    first = [[f["severity"], f["agent_id"], f["reason"], f["dedup_key"], f["time_ns"]] for f in found[:25]]
    assert first == want["first"]
    assert len(found) == want["findings"]
    text = json.dumps({"findings": found, "snapshot": engine.snapshot()}, sort_keys=True)
    assert hashlib.sha256(text.encode()).hexdigest() == want["sha256"]


def _calls(seed: int, n: int = 400) -> list[ToolCall]:
    return [c for b in W.batches(seed, 20) for c in b.calls][:n]


def _contexts(seed: int) -> Iterator[tuple[EvalContext, LazyContext]]:
    """Each call's EvalContext and LazyContext on the same session state, learnt call by call
    (a generator: a LazyContext is read before its call is learnt, as the engine does)."""
    ctx = SessionContext(ContextLimits(destination_warmup_calls=2))
    caps = CapabilityMap()
    for call in sorted(_calls(seed), key=lambda c: c.time_ns):
        c = caps.of(call.server, call.tool)
        plan = plan_tool((), call.server, call.tool, c)
        yield ctx.context(call, c), LazyContext(call, plan.sorted_capabilities, ctx._session(call), ctx)
        ctx.learn(call, c)


def test_direct_paths_and_lazy_context_read_what_the_field_getters_read() -> None:
    from operator import attrgetter

    for tree_ctx, lazy in islice(_contexts(3), 150):
        for name, spec in FIELDS.items():
            want = spec.get(tree_ctx)
            assert spec.get(lazy) == want, name
            if name in DIRECT:
                assert attrgetter(DIRECT[name])(tree_ctx) == want or float(attrgetter(DIRECT[name])(tree_ctx)) == want, name


def test_compiled_conditions_and_guards_agree_with_the_tree() -> None:
    ruleset = load_rule_files(FILES)
    caps = CapabilityMap()
    checked = matched = 0
    for tree_ctx, lazy in _contexts(4):
        call = tree_ctx.call
        plan = plan_tool(ruleset.rules, call.server, call.tool, caps.of(call.server, call.tool))
        kept = {rule.name: test for rule, test in plan.rules}
        for rule in ruleset.rules:
            want = rule.matches(tree_ctx)
            matched += want
            if want:
                assert rule.name in kept and plan.candidate(call, lazy._s), (rule.name, call)
            if rule.name in kept:
                assert bool(kept[rule.name](lazy)) == want, (rule.name, call)
            checked += 1
    assert matched > 50 and checked > 1000  # the workload exercises the rules


def test_specialise_folds_known_fields_and_empty_lists() -> None:
    ruleset = load_rule_files(FILES[:1])  # the shipped rules: trusted_destinations is empty
    send_out = ruleset.rule("send_out")
    assert specialise(send_out.condition, {"capabilities": ("sends_out",)}) is True  # trusted list is empty
    assert specialise(send_out.condition, {"capabilities": ()}) is False
    plan = plan_tool(ruleset.rules, "files", "read_file", frozenset({"reads_sensitive"}))
    quiet = ToolCall(time_ns=1, agent_id="a", tool="read_file", server="files", args_labels=("path",))
    assert plan.rules and not plan.candidate(quiet)  # only list-based rules remain; the call has none they need
    assert plan.candidate(ToolCall(time_ns=1, agent_id="a", tool="read_file", server="files", result_labels=("secret",)))


def test_a_rule_needing_only_session_lists_visits_only_calls_whose_session_has_them() -> None:
    ruleset = load_rule_files(FILES[:1])  # destructive_after_injected_instructions: session.result.labels
    plan = plan_tool(ruleset.rules, "fs", "delete_file", frozenset({"destructive"}))
    assert "destructive_after_injected_instructions" in {rule.name for rule, _ in plan.rules}
    assert plan.session_guard is not None
    quiet = ToolCall(time_ns=3, agent_id="a", tool="delete_file", server="fs", session_id="s")
    ctx = SessionContext()
    assert not plan.candidate(quiet, ctx._session(quiet))  # no session yet
    ctx.learn(ToolCall(time_ns=1, agent_id="a", tool="fetch", server="web", session_id="s",
                       result_labels=("url",)), frozenset())
    assert plan.candidate(quiet, ctx._session(quiet))  # labels seen: a rule reading them may match
    other = ToolCall(time_ns=3, agent_id="a", tool="delete_file", server="fs", session_id="t")
    ctx.learn(ToolCall(time_ns=2, agent_id="a", tool="fetch", server="web", session_id="t"), frozenset())
    assert not plan.candidate(other, ctx._session(other))  # a session without result labels
    assert plan.candidate(ToolCall(time_ns=3, agent_id="a", tool="delete_file", server="fs", result_labels=("secret",)))


def test_session_state_from_the_batch_walk_equals_call_by_call_learning() -> None:
    rnd = random.Random(9)
    calls = sorted(_calls(5), key=lambda c: c.time_ns)
    one, batched = SessionContext(), SessionContext()
    caps = CapabilityMap()
    for call in calls:
        one.learn(call, caps.of(call.server, call.tool))
    i = 0
    while i < len(calls):
        chunk = calls[i:i + rnd.randrange(1, 60)]
        plans = [plan_tool((), c.server, c.tool, caps.of(c.server, c.tool)) for c in chunk]
        batched.walk(chunk, plans, lambda ctx, plan: None)
        i += len(chunk)
    assert batched.snapshot() == one.snapshot()
