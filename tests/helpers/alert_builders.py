"""Small builders shared by the alerting unit tests (real Store, real Finding -> StoredAlert path)."""

from __future__ import annotations

from toolwatch.collector.alerts import alert_id
from toolwatch.collector.store import StoredAlert
from toolwatch.detectors.events import Finding


def finding(i: int = 0, *, detector: str = "new_tool", severity: str = "high", agent: str = "coder", **kw) -> Finding:
    return Finding(
        detector=detector,
        severity=severity,
        agent_id=agent,
        reason=kw.pop("reason", f"reason {i}"),
        time_ns=1_700_000_000_000_000_000 + i * 1_000_000_000,
        server=kw.pop("server", "mail"),
        tool=kw.pop("tool", f"tool{i}"),
        span_ids=(f"span{i}",),
        score=kw.pop("score", 1.0),
        dedup_key=kw.pop("dedup_key", f"{detector}:{agent}:{i}"),
        **kw,
    )


def stored(f: Finding, created_at: float = 1000.0) -> StoredAlert:
    return StoredAlert(
        id=alert_id(f), detector=f.detector, severity=f.severity, agent_id=f.agent_id, first_ns=f.time_ns,
        last_ns=f.time_ns, count=1, status="open", finding=f.to_dict(), created_at=created_at,
    )
