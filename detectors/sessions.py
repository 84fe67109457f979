"""Bounded per-agent tracking of open sessions: the call context that sequence models and
session features need (previous tool, length, rate, errors, servers, result fingerprints).

Sessions have no explicit end in MCP traffic, so a session closes when it has been idle for
``idle_s`` (event time) or when the agent has more than ``max_open`` open sessions (the least
recently active one is closed). Closing hands the closed sessions back to the caller (to learn
the usual session length, or to commit a session's rows to a baseline). Memory per agent: at most ``max_open`` sessions, each holding at most
``max_fingerprints`` fingerprints and ``max_servers`` server names.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

START = "^"
"""The token before a session's first call."""

_NS = 1e9


@dataclass(slots=True)
class Session:
    """What is known about one open session so far."""

    prev: str = START
    n: int = 0
    first_ns: int = 0
    last_ns: int = 0
    errors: int = 0
    rate: float = 0.0
    """Exponentially decayed call count (time constant ``rate_window_s``): recent calls."""
    prev_instructions: bool = False
    """The previous call's result addressed the model (label ``instructions``)."""
    flagged_length: bool = False
    servers: list[str] = field(default_factory=list)
    result_fps: dict[str, str] = field(default_factory=dict)
    """Result fingerprint -> server that returned it."""

    def reset(self, time_ns: int) -> None:
        """Start over as a new session at ``time_ns``, every field as a new ``Session`` has it: a
        pushed-out session's object is reused at high session churn (sequence detector)."""
        self.prev, self.n, self.first_ns, self.last_ns, self.errors, self.rate = START, 0, time_ns, time_ns, 0, 0.0
        self.prev_instructions = self.flagged_length = False
        self.servers.clear()
        self.result_fps.clear()

    def to_dict(self) -> dict[str, Any]:
        return {
            "prev": self.prev, "n": self.n, "first_ns": self.first_ns, "last_ns": self.last_ns,
            "errors": self.errors, "rate": self.rate, "prev_instructions": self.prev_instructions,
            "flagged_length": self.flagged_length, "servers": list(self.servers),
            "result_fps": dict(self.result_fps),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Session":
        return cls(
            prev=str(d["prev"]), n=int(d["n"]), first_ns=int(d["first_ns"]), last_ns=int(d["last_ns"]),
            errors=int(d["errors"]), rate=float(d["rate"]), prev_instructions=bool(d["prev_instructions"]),
            flagged_length=bool(d["flagged_length"]), servers=[str(s) for s in d["servers"]],
            result_fps={str(k): str(v) for k, v in d["result_fps"].items()},
        )


class SessionTracker:
    """Open sessions of one agent, least recently active first."""

    def __init__(self, max_open: int = 32, idle_s: float = 1800.0, rate_window_s: float = 10.0,
                 max_fingerprints: int = 256, max_servers: int = 32) -> None:
        self.max_open = max_open
        self.idle_ns = int(idle_s * _NS)
        self.rate_window_s = rate_window_s
        self.max_fingerprints = max_fingerprints
        self.max_servers = max_servers
        self.open: OrderedDict[str, Session] = OrderedDict()
        self.floor_ns = 0
        """At most the smallest ``last_ns`` of the open sessions: while ``now - floor_ns <= idle``
        no session can be idle, so the per-call check is one comparison."""

    def get(self, session_id: str, time_ns: int) -> tuple[Session, list[tuple[str, Session]]]:
        """The session for a call at ``time_ns`` (created if new), and the sessions this closed."""
        closed: list[tuple[str, Session]] = []
        return self.touch(session_id, time_ns, closed), closed

    def touch(self, session_id: str, time_ns: int, closed: list[tuple[str, Session]]) -> Session:
        """``get`` for hot loops: appends the sessions this closes to ``closed`` (no list per call)
        and checks idleness on the least recently active session only, as ``expire`` does."""
        opened = self.open
        if opened and time_ns - self.floor_ns > self.idle_ns:
            closed.extend(self.expire(time_ns))
        s = opened.get(session_id)
        if s is None:
            s = opened[session_id] = Session(START, 0, time_ns, time_ns, 0, 0.0, False, False, [], {})
            if time_ns < self.floor_ns:
                self.floor_ns = time_ns
            while len(opened) > self.max_open:
                closed.append(opened.popitem(last=False))
        else:
            opened.move_to_end(session_id)
        return s

    def advance(self, s: Session, token: str, server: str, time_ns: int, is_error: bool,
                result_labels: tuple[str, ...], result_fps: tuple[str, ...], injection: float) -> None:
        """Move the session past one call (context only; this is not learning a baseline)."""
        if s.n:
            d = time_ns - s.last_ns
            s.rate = s.rate * math.exp(-(d if d > 0 else 0) / _NS / self.rate_window_s) + 1.0
        else:
            s.rate = s.rate * 0.0 + 1.0  # exp(-inf): the first call of a session
        s.prev = token
        s.n += 1
        if time_ns > s.last_ns:
            s.last_ns = time_ns
        if is_error:
            s.errors += 1
        s.prev_instructions = injection >= 0.5 or "instructions" in result_labels
        servers = s.servers
        if server not in servers and len(servers) < self.max_servers:
            servers.append(server)
        if result_fps:
            self.remember_fps(s, result_fps, server)

    def remember_fps(self, s: Session, result_fps: tuple[str, ...], server: str) -> None:
        """Note which server returned each result fingerprint (oldest forgotten past the bound)."""
        fps = s.result_fps
        for fp in result_fps:
            if len(fps) >= self.max_fingerprints:
                fps.pop(next(iter(fps)))
            fps[fp] = server

    def expire(self, now_ns: int) -> list[tuple[str, Session]]:
        """Close sessions idle for longer than ``idle_s``; return them (id, session)."""
        closed: list[tuple[str, Session]] = []
        while self.open:
            sid, s = next(iter(self.open.items()))
            if now_ns - s.last_ns <= self.idle_ns:
                break
            del self.open[sid]
            closed.append((sid, s))
        self._refloor()
        return closed

    def _refloor(self) -> None:
        self.floor_ns = min((s.last_ns for s in self.open.values()), default=0)

    def to_dict(self) -> dict[str, Any]:
        return {"open": [[k, s.to_dict()] for k, s in self.open.items()]}

    def load(self, d: dict[str, Any]) -> None:
        self.open = OrderedDict((str(k), Session.from_dict(v)) for k, v in d.get("open", []))
        self._refloor()
