"""Which alerts a webhook receiver wants: detector, minimum severity and agent-pattern filters."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Sequence

from toolwatch.detectors.events import severity_rank

from ..store import StoredAlert


@dataclass(frozen=True)
class Route:
    """Every filter must match; an empty filter matches everything."""

    min_severity: str = "info"
    detectors: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    """Shell-style patterns (``prod-*``), matched case-sensitively against the agent id."""

    @classmethod
    def of(cls, min_severity: str, detectors: Sequence[str], agents: Sequence[str]) -> "Route":
        return cls(min_severity, tuple(detectors), tuple(agents))

    def matches(self, alert: StoredAlert) -> bool:
        if severity_rank(alert.severity) < severity_rank(self.min_severity):
            return False
        if self.detectors and alert.detector not in self.detectors:
            return False
        if self.agents and not any(fnmatchcase(alert.agent_id, p) for p in self.agents):
            return False
        return True
