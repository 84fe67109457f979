"""RuleEngine: findings, correlations, capabilities from listings, hot reload, snapshot/restore."""

from __future__ import annotations

import json
import textwrap

from toolwatch.detectors.capabilities import CapabilityMap
from toolwatch.detectors.events import Batch, ToolCall, ToolDefinition, ToolListing
from toolwatch.detectors.rules import RuleEngine, load_rules

T0 = 1_700_000_000_000_000_000
S = 1_000_000_000


def call(tool: str, server: str = "gmail", t: float = 0, **kw) -> ToolCall:
    kw.setdefault("agent_id", "a1")
    kw.setdefault("session_id", "s1")
    kw.setdefault("span_id", f"sp-{tool}-{t}")
    for k in ("args_labels", "result_labels", "destinations"):
        if k in kw:
            kw[k] = tuple(kw[k])
    return ToolCall(time_ns=T0 + int(t * S), tool=tool, server=server, **kw)


RULES = textwrap.dedent("""\
    - list: secret_labels
      items: [secret, api_key]
    - macro: outbound
      condition: capabilities contains sends_out
    - rule: secret_out
      desc: secret sent out
      condition: outbound and args.labels intersects secret_labels
      output: "Secret (%args.labels) sent via %server/%tool by %agent_id."
      priority: critical
      tags: [owasp.asi02, atlas.AML.T0086]
      exceptions:
        - name: billing_bot
          fields: [agent_id, destinations]
          comps: [=, contains]
          values:
            - [billing, invoices.example]
        - name: internal
          condition: destinations glob "*.corp.example"
    - rule: any_fetch
      condition: tool = fetch
      priority: info
      generate: false
    - rule: any_send
      condition: outbound
      priority: info
      generate: false
    - correlation: fetch_burst
      type: event_count
      rules: [any_fetch]
      group-by: [agent_id]
      timespan: 1m
      condition: {gte: 3}
      priority: warning
      output: "%agent_id fetched %count times (%group)"
    - correlation: fan_out
      type: value_count
      rules: [any_fetch]
      group-by: [agent_id]
      timespan: 1m
      condition: {field: destinations, gt: 1}
      priority: warning
    - correlation: fetch_then_send
      type: temporal_ordered
      rules: [any_fetch, any_send]
      group-by: [agent_id, session_id]
      timespan: 30s
      priority: error
    """)


def engine(text: str = RULES, caps: CapabilityMap | None = None) -> RuleEngine:
    return RuleEngine(load_rules(text, "t.yaml"), caps)


def names(findings) -> list[str]:
    return [f.evidence["rule"] for f in findings]


def test_rule_finding_carries_reason_tags_and_span() -> None:
    eng = engine()
    (f,) = eng.observe(Batch(calls=[call("send_email", args_labels=["secret"], span_id="x1", trace_id="t1")]))
    assert f.detector == "rules" and f.severity == "critical"
    assert f.reason == "Secret (secret) sent via gmail/send_email by a1."
    assert f.span_ids == ("x1",) and f.trace_ids == ("t1",) and f.session_id == "s1"
    assert f.evidence["tags"] == ["owasp.asi02", "atlas.AML.T0086"]
    assert f.evidence["source"] == "t.yaml:5"


def test_exceptions_suppress_matches() -> None:
    eng = engine()
    assert eng.observe(Batch(calls=[call("send_email", args_labels=["secret"], agent_id="billing",
                                         destinations=["invoices.example"])])) == []
    assert eng.observe(Batch(calls=[call("send_email", args_labels=["secret"], destinations=["x.corp.example"])])) == []
    assert names(eng.observe(Batch(calls=[call("send_email", args_labels=["secret"], agent_id="billing",
                                               destinations=["other.example"])]))) == ["secret_out"]


def test_event_count_fires_once_per_window() -> None:
    eng = engine()
    out = eng.observe(Batch(calls=[call("fetch", "web", t) for t in (0, 10, 20, 30)]))
    burst = [f for f in out if f.evidence["rule"] == "fetch_burst"]
    assert len(burst) == 1
    assert burst[0].reason == "a1 fetched 3 times (agent_id=a1)"
    assert burst[0].span_ids == ("sp-fetch-0", "sp-fetch-10", "sp-fetch-20")
    spaced = engine()
    assert not [f for f in spaced.observe(Batch(calls=[call("fetch", "web", t) for t in (0, 40, 80)]))
                if f.evidence["rule"] == "fetch_burst"]


def test_value_count_counts_distinct_values() -> None:
    eng = engine()
    same = eng.observe(Batch(calls=[call("fetch", "web", 0, destinations=["a.example"]),
                                    call("fetch", "web", 1, destinations=["a.example"])]))
    assert "fan_out" not in names(same)
    out = eng.observe(Batch(calls=[call("fetch", "web", 2, destinations=["b.example"])]))
    (f,) = [f for f in out if f.evidence["rule"] == "fan_out"]
    assert f.evidence["values"] == ["a.example", "b.example"] and f.evidence["count"] == 2


def test_temporal_ordered_needs_order_and_timespan() -> None:
    eng = engine()
    out = eng.observe(Batch(calls=[call("fetch", "web", 0), call("send_email", "gmail", 10)]))
    assert "fetch_then_send" in names(out)
    wrong_order = engine()
    assert "fetch_then_send" not in names(wrong_order.observe(
        Batch(calls=[call("send_email", "gmail", 0), call("fetch", "web", 10)])))
    too_slow = engine()
    assert "fetch_then_send" not in names(too_slow.observe(
        Batch(calls=[call("fetch", "web", 0), call("send_email", "gmail", 31)])))
    other_session = engine()
    assert "fetch_then_send" not in names(other_session.observe(
        Batch(calls=[call("fetch", "web", 0), call("send_email", "gmail", 5, session_id="s2")])))


def test_capabilities_from_listing_annotations_reach_conditions() -> None:
    eng = engine()
    relay = call("relay", "acme", 0, args_labels=["secret"])
    assert eng.observe(Batch(calls=[relay])) == []
    listing = ToolListing(time_ns=T0, agent_id="a1", server="acme",
                          tools=(ToolDefinition("relay", annotations={"openWorldHint": True}),))
    assert names(eng.observe(Batch(calls=[call("relay", "acme", 1, args_labels=["secret"])], listings=[listing]))) \
        == ["secret_out"]


def test_disabled_rule_is_silent() -> None:
    rs = load_rules(RULES + "- rule: secret_out\n  enabled: false\n", "t.yaml")
    eng = RuleEngine(rs)
    assert eng.observe(Batch(calls=[call("send_email", args_labels=["secret"])])) == []


def test_hot_reload_keeps_last_good_rules_and_reports_why() -> None:
    eng = engine()
    err = eng.reload([("- rule: broken\n  condition: tool = \n  priority: info\n", "new.yaml")])
    assert err is not None and "new.yaml:2: rule 'broken'" in str(err)
    assert names(eng.observe(Batch(calls=[call("send_email", args_labels=["secret"])]))) == ["secret_out"]
    assert eng.reload([("- rule: only\n  condition: tool = fetch\n  priority: low\n", "new.yaml")]) is None
    assert names(eng.observe(Batch(calls=[call("fetch", "web", 1)]))) == ["only"]


def test_reload_keeps_windows_of_unchanged_correlations() -> None:
    eng = engine()
    eng.observe(Batch(calls=[call("fetch", "web", 0), call("fetch", "web", 1)]))
    assert eng.reload([(RULES, "t.yaml")]) is None
    assert "fetch_burst" in names(eng.observe(Batch(calls=[call("fetch", "web", 2)])))
    changed = engine()
    changed.observe(Batch(calls=[call("fetch", "web", 0), call("fetch", "web", 1)]))
    assert changed.reload([(RULES.replace("condition: {gte: 3}", "condition: {gte: 2}"), "t.yaml")]) is None
    assert "fetch_burst" not in names(changed.observe(Batch(calls=[call("fetch", "web", 2)])))


def test_snapshot_restore_gives_identical_findings() -> None:
    first = [call("fetch", "web", 0, destinations=["a.example"]), call("fetch", "web", 1)]
    second = [call("fetch", "web", 2, destinations=["b.example"]), call("send_email", "gmail", 3)]
    a = engine()
    a.observe(Batch(calls=first))
    b = engine()
    b.restore(json.loads(json.dumps(a.snapshot())))
    fa, fb = a.observe(Batch(calls=second)), b.observe(Batch(calls=second))
    assert [f.to_dict() for f in fa] == [f.to_dict() for f in fb]
    assert sorted(names(fa)) == ["fan_out", "fetch_burst", "fetch_then_send"]


def test_state_is_bounded() -> None:
    from toolwatch.detectors.rules import RuleEngineConfig

    eng = RuleEngine(load_rules(RULES, "t.yaml"), config=RuleEngineConfig(max_sessions=5, max_groups=4))
    eng.observe(Batch(calls=[call("fetch", "web", i, agent_id=f"ag{i}", session_id=f"s{i}") for i in range(50)]))
    snap = eng.snapshot()
    assert len(snap["context"]["sessions"]) == 5
    assert all(len(w["groups"]) <= 4 for w in snap["windows"].values())


def test_prev_result_labels_follow_the_session() -> None:
    text = "- rule: after_injection\n  condition: prev.result.labels contains instructions\n  priority: high\n"
    eng = engine(text)
    out = eng.observe(Batch(calls=[call("fetch", "web", 0, result_labels=["instructions"]),
                                   call("read_inbox", "gmail", 1, session_id="other"),
                                   call("send_email", "gmail", 2)]))
    assert [f.tool for f in out] == ["send_email"]


def test_engine_config_errors_name_the_key() -> None:
    import pytest

    from toolwatch.detectors.rules import RuleEngineConfig

    with pytest.raises(ValueError, match="rules.max_sessions"):
        RuleEngineConfig.from_dict({"max_sessions": 0})
    with pytest.raises(ValueError, match="rules: unknown key max_session"):
        RuleEngineConfig.from_dict({"max_session": 5})
    assert RuleEngineConfig.from_dict({"files": "local.yaml"}).files == ("local.yaml",)
