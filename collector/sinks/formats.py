"""Webhook payload formats: toolwatch JSON (versioned), Slack-compatible, Alertmanager webhook.

Pure functions from stored alerts to a request body. ``toolwatch`` sends one alert per request;
``slack`` and ``alertmanager`` put every alert due at once (a burst, or a backlog released by a
rate limit) into one digest message, up to ``MAX_BATCH[format]``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Callable, Sequence, TypeVar

from ..store import StoredAlert

SCHEMA_VERSION = "toolwatch.alert/v1"
ALERTMANAGER_VERSION = "4"
ALERTNAME = "ToolwatchFinding"
ZERO_TIME = "0001-01-01T00:00:00Z"
"""Alertmanager's 'no end time' for a firing alert."""

MAX_BATCH: dict[str, int] = {"toolwatch": 1, "slack": 20, "alertmanager": 50}
GROUP_KEYS: tuple[str, ...] = ("detector", "severity", "agent", "server", "tool")
"""Alert fields a receiver's ``group_by`` may split digests by."""
SLACK_EMOJI = {"info": ":information_source:", "low": ":large_blue_circle:", "medium": ":warning:",
               "high": ":rotating_light:", "critical": ":fire:"}


def _dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def idempotency_key(alerts: Sequence[StoredAlert]) -> str:
    """The alert id for one alert; for a digest, a hash of its sorted alert ids (same set, same key)."""
    if len(alerts) == 1:
        return alerts[0].id
    joined = ",".join(sorted(a.id for a in alerts))
    return "digest-" + hashlib.sha256(joined.encode()).hexdigest()[:24]


def toolwatch_body(alerts: Sequence[StoredAlert], receiver: str) -> bytes:
    (alert,) = alerts
    return _dumps({"schema": SCHEMA_VERSION, "alert": alert.to_dict()})


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_line(a: StoredAlert) -> str:
    f = a.finding
    where = f"{f.get('server', '')}/{f.get('tool', '')}".strip("/") or "-"
    repeat = f" (x{a.count})" if a.count > 1 else ""
    return _slack_escape(
        f"[{a.severity.upper()}] {a.detector} - agent {a.agent_id} - {where}{repeat}: {f.get('reason', '')}"
    )


def slack_body(alerts: Sequence[StoredAlert], receiver: str) -> bytes:
    """Slack incoming-webhook JSON: ``text`` (notification fallback) plus Block Kit sections."""
    n = len(alerts)
    title = f"toolwatch: {n} alert{'s' if n != 1 else ''}"
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": title}}]
    for a in alerts:
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"{SLACK_EMOJI.get(a.severity, '')} {_slack_line(a)}"[:2900]},
            }
        )
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"alert `{a.id}`"}]})
    text = title + "\n" + "\n".join(_slack_line(a) for a in alerts)
    return _dumps({"text": text[:3000], "blocks": blocks})


def alertmanager_alert(a: StoredAlert) -> dict[str, Any]:
    f = a.finding
    labels = {
        "alertname": ALERTNAME,
        "detector": a.detector,
        "severity": a.severity,
        "agent": a.agent_id,
        "alert_id": a.id,
    }
    for key in ("server", "tool", "session_id"):
        if f.get(key):
            labels[key] = str(f[key])
    return {
        "status": "firing",
        "labels": labels,
        "annotations": {
            "summary": str(f.get("reason", "")),
            "count": str(a.count),
            "evidence": json.dumps(f.get("evidence", {}), sort_keys=True),
        },
        "startsAt": _rfc3339(a.first_ns),
        "endsAt": ZERO_TIME,
        "generatorURL": "",
        "fingerprint": hashlib.sha256(a.id.encode()).hexdigest()[:16],
    }


def _common(dicts: list[dict[str, str]]) -> dict[str, str]:
    if not dicts:
        return {}
    first = dicts[0]
    return {k: v for k, v in first.items() if all(d.get(k) == v for d in dicts[1:])}


def alertmanager_body(alerts: Sequence[StoredAlert], receiver: str) -> bytes:
    """The Alertmanager webhook payload (version 4), so Alertmanager webhook consumers take it as-is."""
    items = [alertmanager_alert(a) for a in alerts]
    common_labels = _common([i["labels"] for i in items])
    group_labels = {k: common_labels[k] for k in ("alertname",) if k in common_labels}
    return _dumps(
        {
            "version": ALERTMANAGER_VERSION,
            "groupKey": f"{{}}:{{alertname=\"{ALERTNAME}\"}}/toolwatch/{receiver}",
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": receiver,
            "groupLabels": group_labels,
            "commonLabels": common_labels,
            "commonAnnotations": _common([i["annotations"] for i in items]),
            "externalURL": "",
            "alerts": items,
        }
    )


def group_value(alert: StoredAlert, key: str) -> str:
    if key == "agent":
        return alert.agent_id
    if key in ("detector", "severity"):
        return str(getattr(alert, key))
    return str(alert.finding.get(key, ""))


T = TypeVar("T")


def digest_chunks(items: Sequence[T], alert_of: Callable[[T], StoredAlert], size: int, group_by: Sequence[str]) -> list[list[T]]:
    """Split due items into messages: one group per distinct ``group_by`` value (first-seen order), each
    cut into chunks of at most ``size``. Order within a group is kept."""
    groups: dict[tuple[str, ...], list[T]] = {}
    for item in items:
        a = alert_of(item)
        groups.setdefault(tuple(group_value(a, k) for k in group_by), []).append(item)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]


RENDERERS: dict[str, Callable[[Sequence[StoredAlert], str], bytes]] = {
    "toolwatch": toolwatch_body,
    "slack": slack_body,
    "alertmanager": alertmanager_body,
}


def render(fmt: str, alerts: Sequence[StoredAlert], receiver: str) -> bytes:
    """Body for ``alerts`` (at most ``MAX_BATCH[fmt]`` of them) in format ``fmt``."""
    if not alerts:
        raise ValueError("render needs at least one alert")
    if len(alerts) > MAX_BATCH[fmt]:
        raise ValueError(f"format {fmt} takes at most {MAX_BATCH[fmt]} alerts per message, got {len(alerts)}")
    return RENDERERS[fmt](alerts, receiver)
