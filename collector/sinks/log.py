"""Alerts to the log: one structured line each, never a raw secret (findings carry none)."""

from __future__ import annotations

import logging

from ..store import StoredAlert
from . import Sink


class LogSink(Sink):
    name = "log"

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("toolwatch.alerts")

    def emit(self, alerts: list[StoredAlert]) -> None:
        if not self.log.isEnabledFor(logging.WARNING):
            return  # nobody reads it: skip formatting every alert
        for a in alerts:
            f = a.finding
            self.log.warning(
                "ALERT %s [%s] %s agent=%s session=%s %s",
                a.id,
                a.severity,
                a.detector,
                a.agent_id,
                f.get("session_id", ""),
                f.get("reason", ""),
                extra={"alert": a.to_json()},  # json.dumps(a.to_dict(), sort_keys=True)
            )
