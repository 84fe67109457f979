"""Calls held for a human decision: the book of open holds, their deadlines and outcomes.

Why in memory: a hold lives as long as the proxy's request waits (seconds to minutes); when the
daemon restarts, the waiting proxies see it unreachable and apply their fail mode. Decided holds
are kept (bounded) so a late ``approve`` gets a clear "already decided" answer.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

__all__ = ["Hold", "HoldBook", "HoldError", "UnknownHold", "AlreadyDecided"]

DECISIONS = ("allow", "deny")
MAX_TIMEOUT_S = 3600.0


class HoldError(ValueError):
    """A hold request is malformed; the message names the field."""


class UnknownHold(LookupError):
    pass


class AlreadyDecided(RuntimeError):
    def __init__(self, hold: "Hold") -> None:
        super().__init__(f"hold {hold.id} was already decided: {hold.status} ({hold.decided_by})")
        self.hold = hold


@dataclass(slots=True)
class Hold:
    """One held call. ``arguments`` is the redacted JSON text the proxy sent, never raw values."""

    id: str
    agent_id: str
    server: str
    tool: str
    arguments: str
    reason: str
    rule: str
    created_at: float
    expires_at: float
    default: str
    status: str = "pending"
    """pending, approved, denied or timed_out."""
    decision: str = ""
    """allow or deny once decided (a timeout takes ``default``)."""
    decided_by: str = ""
    decided_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HoldBook:
    """Open and recently decided holds; one instance per daemon."""

    clock: Callable[[], float] = time.time
    max_kept: int = 1000
    on_close: Callable[[Hold], None] | None = None
    """Called once per hold when it is decided or times out (the daemon counts outcomes)."""
    _holds: "OrderedDict[str, Hold]" = field(default_factory=OrderedDict)
    _events: dict[str, asyncio.Event] = field(default_factory=dict)
    _stopping: bool = False

    def create(self, body: Any) -> Hold:
        """Open a hold from the proxy's request body (fields validated, errors name them)."""
        if not isinstance(body, dict):
            raise HoldError("body: must be a JSON object")
        text: dict[str, str] = {}
        for key in ("agent_id", "server", "tool", "arguments", "reason", "rule"):
            value = body.get(key, "")
            if not isinstance(value, str):
                raise HoldError(f"{key}: must be a string")
            text[key] = value[:65536]
        if not text["tool"]:
            raise HoldError("tool: missing; name the held tool")
        timeout = body.get("timeout_s", 300)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT_S:
            raise HoldError(f"timeout_s: must be a number of seconds in (0, {MAX_TIMEOUT_S:g}]")
        default = body.get("default", "deny")
        if default not in DECISIONS:
            raise HoldError(f"default: must be one of {', '.join(DECISIONS)}")
        now = self.clock()
        hold = Hold(id="hold_" + secrets.token_hex(8), created_at=now, expires_at=now + float(timeout),
                    default=default, **text)
        self._holds[hold.id] = hold
        self._events[hold.id] = asyncio.Event()
        self._trim()
        return hold

    def get(self, hold_id: str) -> Hold:
        hold = self._holds.get(hold_id)
        if hold is None:
            raise UnknownHold(hold_id)
        self._expire(hold)
        return hold

    def list(self, status: str | None = None) -> list[Hold]:
        for hold in list(self._holds.values()):
            self._expire(hold)
        return [h for h in self._holds.values() if status is None or h.status == status]

    def decide(self, hold_id: str, decision: str, by: str) -> Hold:
        """Approve (``allow``) or deny an open hold; deciding twice raises ``AlreadyDecided``."""
        hold = self.get(hold_id)
        if hold.status != "pending":
            raise AlreadyDecided(hold)
        self._close(hold, "approved" if decision == "allow" else "denied", decision, by)
        return hold

    async def wait(self, hold_id: str, wait_s: float) -> Hold:
        """The hold once decided or expired, or as it is after ``wait_s`` seconds."""
        hold = self.get(hold_id)
        if hold.status != "pending" or self._stopping:
            return hold
        remaining = max(0.0, hold.expires_at - self.clock())
        try:
            await asyncio.wait_for(self._events[hold_id].wait(), min(wait_s, remaining + 0.01))
        except asyncio.TimeoutError:
            pass
        return self.get(hold_id)

    def stop_waits(self) -> None:
        """Answer every long-poll now, and later ones at once, with the hold as it is (the daemon is
        stopping). Its API's stop waited for them (up to the 30 s a proxy polls for, 60 s at most),
        past a service manager's stop timeout; the proxies re-poll, find the daemon gone and apply
        their fail mode, as they do when it dies."""
        self._stopping = True
        for event in self._events.values():
            event.set()

    def _expire(self, hold: Hold) -> None:
        if hold.status == "pending" and self.clock() >= hold.expires_at:
            self._close(hold, "timed_out", hold.default, "timeout")

    def _close(self, hold: Hold, status: str, decision: str, by: str) -> None:
        hold.status, hold.decision, hold.decided_by, hold.decided_at = status, decision, by, self.clock()
        event = self._events.get(hold.id)
        if event is not None:
            event.set()
        if self.on_close is not None:
            self.on_close(hold)

    def _trim(self) -> None:
        while len(self._holds) > self.max_kept:
            oldest = next((k for k, h in self._holds.items() if h.status != "pending"), None)
            if oldest is None:
                return
            del self._holds[oldest]
            self._events.pop(oldest, None)
