"""Turns findings into alerts: stable ids, grouping of repeats, durable queueing, fan-out to sinks."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from operator import attrgetter
from typing import Callable, Sequence

from toolwatch.detectors.events import Finding

from .metrics import Metrics
from .sinks import Sink
from .store import AlertRef, Store, StoredAlert

_DETECTOR_SEVERITY = attrgetter("detector", "severity")


def alert_id(f: Finding) -> str:
    """Deterministic: the same finding from a replay or another daemon gets the same id."""
    key = "|".join((f.detector, f.agent_id, f.dedup_key, str(f.time_ns), ",".join(f.span_ids)))
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:24]


class AlertRouter:
    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        sinks: Sequence[Sink],
        *,
        group_window_ns: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.sinks = list(sinks)
        self.group_window_ns = group_window_ns
        self.clock = clock

    def route(self, findings: list[Finding]) -> list[StoredAlert]:
        """Store new alerts (and their outbox rows) in one transaction, then wake the sinks."""
        new: list[StoredAlert] = []
        bumps: list[tuple[str, int]] = []
        pending: dict[str, StoredAlert] = {}
        # Every key's latest stored alert, in one query (the store is written only at the end).
        stored: dict[str, AlertRef] = {}
        if findings and self.group_window_ns > 0:
            since = min(f.time_ns for f in findings) - self.group_window_ns
            stored = self.store.latest_alert_refs((f.dedup_key for f in findings), since)
        for (detector, severity), n in Counter(map(_DETECTOR_SEVERITY, findings)).items():
            self.metrics.findings.labels(detector, severity).inc(n)
        for f in findings:
            grouped: StoredAlert | AlertRef | None = pending.get(f.dedup_key)
            if grouped is None and self.group_window_ns > 0:
                grouped = self._open_alert_for(f.dedup_key, f.time_ns - self.group_window_ns, stored)
            if grouped is not None and abs(f.time_ns - grouped.last_ns) <= self.group_window_ns:
                if grouped.id in pending:
                    grouped.count += 1
                    grouped.last_ns = max(grouped.last_ns, f.time_ns)
                else:
                    bumps.append((grouped.id, f.time_ns))
                continue
            alert = StoredAlert(
                id=alert_id(f),
                detector=f.detector,
                severity=f.severity,
                agent_id=f.agent_id,
                first_ns=f.time_ns,
                last_ns=f.time_ns,
                count=1,
                status="open",
                finding=f.to_dict(),
                created_at=self.clock(),
            )
            pending[f.dedup_key] = alert
            new.append(alert)
        if not new and not bumps:
            return []
        durable = [s for s in self.sinks if s.durable]
        self.store.record_alerts(new, bumps, lambda a: [s.name for s in durable if s.wants(a)])
        for (detector, severity), n in Counter(map(_DETECTOR_SEVERITY, new)).items():
            self.metrics.alerts.labels(detector, severity).inc(n)
        if new:
            for sink in self.sinks:
                sink.emit(new)
        return new

    def _open_alert_for(self, dedup_key: str, since_ns: int, stored: dict[str, AlertRef]) -> AlertRef | None:
        """What ``store.open_alert_ref`` would answer, from the batch's ``latest_alert_refs``: the
        key's latest alert is the one found if it ends at or after ``since_ns``, else there is none."""
        row = stored.get(dedup_key)
        return row if row is not None and row.last_ns >= since_ns else None
