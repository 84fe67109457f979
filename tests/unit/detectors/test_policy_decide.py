"""Policy decisions: allow/deny lists, roles, argument bounds, schema validation, destructive tools."""

from __future__ import annotations

import json

import pytest

from toolwatch.detectors.events import Batch, ToolCall, ToolDefinition, ToolListing
from toolwatch.detectors.policy import CallView, PolicyDetector, ToolFacts, decide, schema_errors
from toolwatch.detectors.policy_config import PolicyConfig

POLICY = {
    "roles": {"support": ["support-*"], "admin": ["ops-admin"]},
    "subjects": [
        {"roles": ["support"], "allow_servers": ["crm", "mail"], "deny_tools": ["*/delete_*"]},
        {"agents": ["*"], "deny_servers": ["pastebin"]},
    ],
    "arguments": [
        {"tools": ["mail/send_*"], "max_bytes": 2000, "deny_patterns": [r'"bcc"\s*:']},
    ],
    "destructive": {"tools": ["fs/rm"], "allowed_roles": ["admin"], "action": "hold"},
    "schema_violation": "deny",
}
CONFIG = PolicyConfig.from_dict(POLICY)


def call(agent="support-7", server="crm", tool="lookup", args=None, **kw) -> ToolCall:
    return ToolCall(time_ns=1, agent_id=agent, tool=tool, server=server, span_id="sp", session_id="s",
                    args_json=json.dumps(args or {}), **kw)


def test_allowed_call():
    d = decide(CONFIG, call())
    assert d.action == "allow" and d.allowed and d.violations == ()


def test_role_allow_list_denies_other_servers():
    d = decide(CONFIG, call(server="github", tool="create_issue"))
    assert d.action == "deny" and d.rule == "subjects[0].allow_servers" and "github" in d.reason


def test_deny_tool_glob_and_fleet_wide_deny_server():
    assert decide(CONFIG, call(tool="delete_contact")).rule == "subjects[0].deny_tools"
    d = decide(CONFIG, call(agent="research-1", server="pastebin", tool="create_paste"))
    assert d.action == "deny" and d.rule == "subjects[1].deny_servers"


def test_agent_outside_roles_is_not_bound_by_role_allow_list():
    assert decide(CONFIG, call(agent="research-1", server="github", tool="create_issue")).allowed


def test_argument_bounds_size_and_pattern():
    big = call(server="mail", tool="send_email", args={"to": "a@b.example", "body": "x" * 3000})
    d = decide(CONFIG, big)
    assert d.action == "deny" and d.rule == "arguments[0].max_bytes" and "3" in d.reason
    bcc = call(server="mail", tool="send_email", args={"to": "a@b.example", "bcc": "x@evil.example"})
    assert decide(CONFIG, bcc).rule == "arguments[0].deny_patterns[0]"
    fine = call(server="mail", tool="send_email", args={"to": "a@b.example", "body": "hi"})
    assert decide(CONFIG, fine).allowed
    # the size before redaction wins when the span carries it
    assert decide(CONFIG, call(server="mail", tool="send_email", args_bytes=10_000)).rule == "arguments[0].max_bytes"


def test_destructive_needs_role_configured_or_annotated():
    assert decide(CONFIG, call(agent="research-1", server="fs", tool="rm")).action == "hold"
    assert decide(CONFIG, call(agent="ops-admin", server="fs", tool="rm")).allowed
    annotated = ToolFacts(destructive=True)
    d = decide(CONFIG, call(agent="research-1", server="db", tool="drop_table"), annotated)
    assert d.action == "hold" and d.rule == "destructive"
    off = PolicyConfig.from_dict({"destructive": {"use_annotations": False}})
    assert decide(off, call(agent="research-1", server="db", tool="drop_table"), annotated).allowed


SCHEMA = {"type": "object", "properties": {"amount": {"type": "integer", "maximum": 1000},
                                          "currency": {"enum": ["EUR", "USD"]}},
          "required": ["amount"], "additionalProperties": False}


def test_schema_violation_names_path_not_value():
    facts = ToolFacts(input_schema=SCHEMA)
    d = decide(CONFIG, call(agent="x", server="pay", tool="refund", args={"amount": 999999, "note": "SECRETVALUE"}),
               facts)
    assert d.action == "deny" and d.rule == "schema_validation"
    text = " ".join(r for _, _, r in d.violations)
    assert "arguments['amount']" in text and "maximum" in text and "additionalProperties" in text
    assert "SECRETVALUE" not in text and "999999" not in text
    assert decide(CONFIG, call(agent="x", server="pay", tool="refund", args={"amount": 5}), facts).allowed


def test_unparseable_args_and_broken_schema_do_not_crash():
    assert decide(CONFIG, CallView("x", "pay", "refund", args_json="{not json"), ToolFacts(SCHEMA)).allowed
    assert schema_errors({"type": 12}, {}) == []
    remote = {"type": "object", "properties": {"a": {"$ref": "https://example.invalid/s.json"}}}
    assert schema_errors(remote, {"a": 1}) == []


def test_decide_accepts_plain_mapping_from_a_proxy():
    d = decide(CONFIG, {"agent_id": "support-1", "server": "mail", "tool": "send_email",
                        "arguments": {"bcc": "x@evil.example"}})
    assert d.action == "deny"


def test_default_deny():
    cfg = PolicyConfig.from_dict({"default": "deny", "subjects": [{"agents": ["bot-*"], "allow_tools": ["web/*"]}]})
    assert decide(cfg, call(agent="bot-1", server="web", tool="search")).allowed
    assert decide(cfg, call(agent="other", server="web", tool="search")).rule == "default"


def test_detector_learns_schema_and_annotations_from_listings():
    det = PolicyDetector(CONFIG)
    listing = ToolListing(time_ns=0, agent_id="x", server="pay", tools=(
        ToolDefinition(name="refund", input_schema=SCHEMA),
        ToolDefinition(name="wipe", annotations={"destructiveHint": True}),
        ToolDefinition(name="peek", annotations={"destructiveHint": True, "readOnlyHint": True}),
        ToolDefinition(name="plain")))
    bad = call(agent="x", server="pay", tool="refund", args={"amount": "lots"})
    findings = det.observe(Batch(calls=[bad, call(agent="x", server="pay", tool="wipe"),
                                        call(agent="x", server="pay", tool="peek"),
                                        call(agent="x", server="pay", tool="plain")], listings=[listing]))
    assert [(f.tool, f.evidence["action"], f.severity) for f in findings] == [
        ("refund", "deny", "high"), ("wipe", "hold", "medium")]
    assert findings[0].span_ids == ("sp",) and findings[0].evidence["source"] == "policy.yaml"
    twin = PolicyDetector(CONFIG)
    twin.restore(json.loads(json.dumps(det.snapshot())))
    assert twin.decide(bad) == det.decide(bad)


def test_default_config_allows_everything():
    det = PolicyDetector()
    assert det.observe(Batch(calls=[call(), call(server="pastebin", tool="delete_all")])) == []


@pytest.mark.parametrize("tool,pattern,match", [("send", "mail/send", True), ("send", "send", True),
                                                ("send", "web/send", False), ("send_sms", "*/send_*", True)])
def test_tool_patterns(tool, pattern, match):
    cfg = PolicyConfig.from_dict({"subjects": [{"agents": ["*"], "deny_tools": [pattern]}]})
    assert (decide(cfg, call(agent="a", server="mail", tool=tool)).action == "deny") is match
