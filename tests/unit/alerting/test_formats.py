"""Payload formats: shape of each, escaping, digests, and robustness on arbitrary text (hypothesis)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.alert_builders import finding, stored
from toolwatch.collector.sinks.formats import MAX_BATCH, SCHEMA_VERSION, digest_chunks, idempotency_key, render


def test_toolwatch_format_is_versioned_and_carries_the_whole_alert():
    a = stored(finding(1))
    body = json.loads(render("toolwatch", [a], "ops"))
    assert body["schema"] == SCHEMA_VERSION == "toolwatch.alert/v1"
    assert body["alert"] == json.loads(json.dumps(a.to_dict()))
    with pytest.raises(ValueError, match="at most 1"):
        render("toolwatch", [a, stored(finding(2))], "ops")


def test_slack_format_escapes_control_characters_and_lists_every_alert():
    alerts = [stored(finding(i, reason="<!channel> & <http://evil|click>")) for i in range(3)]
    body = json.loads(render("slack", alerts, "ops"))
    assert body["text"].startswith("toolwatch: 3 alerts")
    sections = [b for b in body["blocks"] if b["type"] == "section"]
    assert len(sections) == 3
    for s in sections:
        assert "<" not in s["text"]["text"] and "&lt;!channel&gt; &amp; &lt;http://evil|click&gt;" in s["text"]["text"]
    assert "<" not in body["text"]


def test_alertmanager_format_has_the_webhook_v4_fields():
    alerts = [stored(finding(0, agent="a1")), stored(finding(1, agent="a2"))]
    body = json.loads(render("alertmanager", alerts, "ops"))
    assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "ops"
    assert body["commonLabels"] == {"alertname": "ToolwatchFinding", "detector": "new_tool", "severity": "high", "server": "mail"}
    assert body["groupLabels"] == {"alertname": "ToolwatchFinding"}
    first = body["alerts"][0]
    assert first["labels"]["agent"] == "a1" and first["labels"]["alert_id"] == alerts[0].id
    assert first["startsAt"] == "2023-11-14T22:13:20.000Z" and first["endsAt"] == "0001-01-01T00:00:00Z"
    assert first["annotations"]["summary"] == "reason 0"


def test_idempotency_key_is_the_alert_id_or_an_order_free_digest():
    a, b = stored(finding(0)), stored(finding(1))
    assert idempotency_key([a]) == a.id
    assert idempotency_key([a, b]) == idempotency_key([b, a]) != idempotency_key([a])


text = st.text(min_size=0, max_size=200)


@settings(max_examples=150, deadline=None)
@given(reason=text, agent=text.filter(bool), tool=text, n=st.integers(1, 5), fmt=st.sampled_from(sorted(MAX_BATCH)))
def test_any_text_renders_to_valid_json(reason, agent, tool, n, fmt):
    alerts = [stored(finding(i, agent=agent, tool=tool, reason=reason)) for i in range(min(n, MAX_BATCH[fmt]))]
    body = json.loads(render(fmt, alerts, "ops"))
    if fmt == "slack":
        assert all("<" not in b["text"]["text"] and ">" not in b["text"]["text"] for b in body["blocks"] if b["type"] == "section")
    if fmt == "alertmanager":
        assert all(a["labels"]["agent"] == agent for a in body["alerts"])


def test_digest_chunks_split_by_group_then_size_keeping_order():
    alerts = [stored(finding(i, agent=f"a{i % 2}", detector="volume" if i < 3 else "exfiltration")) for i in range(7)]
    by_agent = digest_chunks(alerts, lambda a: a, 2, ["agent"])
    assert [[a.agent_id for a in c] for c in by_agent] == [["a0", "a0"], ["a0", "a0"], ["a1", "a1"], ["a1"]]
    assert [a for c in by_agent for a in c if a.agent_id == "a0"] == [a for a in alerts if a.agent_id == "a0"]
    both = digest_chunks(alerts, lambda a: a, 50, ["detector", "agent"])
    assert [(c[0].detector, c[0].agent_id, len(c)) for c in both] == [
        ("volume", "a0", 2), ("volume", "a1", 1), ("exfiltration", "a1", 2), ("exfiltration", "a0", 2)
    ]
    assert digest_chunks(alerts, lambda a: a, 50, []) == [alerts]
