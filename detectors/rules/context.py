"""Session context for conditions: the previous call, what the session saw, new destinations.

Bounded: an LRU of sessions, capped sets per session and per agent; sessions expire in event
time, so replaying recorded traffic gives the same answers as live traffic.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..events import ToolCall, destination_keys
from .fields import EvalContext


@dataclass(slots=True)
class ContextLimits:
    max_sessions: int = 10_000
    max_items: int = 64
    """Cap on labels / capabilities / servers remembered per session."""
    max_destinations: int = 5_000
    """Cap on destinations remembered per agent (oldest forgotten first)."""
    max_agents: int = 10_000
    session_ttl_ns: int = 3_600_000_000_000
    destination_warmup_calls: int = 0
    """Calls naming destinations an agent makes before ``destinations.new`` names any: while an
    agent is new every destination is new, which says nothing."""

    def validate(self) -> None:
        for name in ("max_sessions", "max_items", "max_destinations", "max_agents", "session_ttl_ns"):
            if getattr(self, name) < 1:
                raise ValueError(f"rules.{name} must be at least 1")
        if self.destination_warmup_calls < 0:
            raise ValueError("rules.destination_warmup_calls must not be negative")


@dataclass(slots=True)
class _Session:
    last_ns: int = 0
    calls: int = 0
    prev_tool: str = ""
    prev_server: str = ""
    prev_result_labels: tuple[str, ...] = ()
    prev_capabilities: tuple[str, ...] = ()
    prev_injection_score: float = 0.0
    result_labels: list[str] = field(default_factory=list)
    capabilities: list[str] = field(default_factory=list)
    servers: list[str] = field(default_factory=list)


class SessionContext:
    """Builds the ``EvalContext`` for a call, then learns from it."""

    def __init__(self, limits: ContextLimits | None = None) -> None:
        self.limits = limits or ContextLimits()
        self.limits.validate()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._oldest_ns: int | None = None
        """None (unknown: scan), else no session's ``last_ns`` is below this: ``expire`` skips its scan until the cutoff passes it."""
        self._destinations: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()
        self._destination_calls: dict[str, int] = {}

    def context(self, call: ToolCall, capabilities: frozenset[str]) -> EvalContext:
        s = self._sessions.get(_key(call))
        if s is not None and call.time_ns - s.last_ns > self.limits.session_ttl_ns:
            s = None
        known = self._destinations.get(call.agent_id, {})
        new = tuple(d for d in destination_keys(call.destinations) if d not in known)
        if self._destination_calls.get(call.agent_id, 0) < self.limits.destination_warmup_calls:
            new = ()
        if s is None:
            return EvalContext(call=call, capabilities=capabilities, new_destinations=new)
        return EvalContext(
            call=call,
            capabilities=capabilities,
            prev_tool=s.prev_tool,
            prev_server=s.prev_server,
            prev_result_labels=s.prev_result_labels,
            prev_capabilities=s.prev_capabilities,
            prev_injection_score=s.prev_injection_score,
            session_calls=s.calls,
            session_result_labels=tuple(s.result_labels),
            session_capabilities=tuple(s.capabilities),
            session_servers=tuple(s.servers),
            new_destinations=new,
        )

    def learn(self, call: ToolCall, capabilities: frozenset[str]) -> None:
        key = _key(call)
        s = self._sessions.get(key)
        if s is None or call.time_ns - s.last_ns > self.limits.session_ttl_ns:
            s = _Session()
        self._sessions[key] = s
        self._sessions.move_to_end(key)
        s.last_ns = max(s.last_ns, call.time_ns)
        if self._oldest_ns is not None and s.last_ns < self._oldest_ns:
            self._oldest_ns = s.last_ns
        s.calls += 1
        s.prev_tool, s.prev_server = call.tool, call.server
        s.prev_result_labels = tuple(call.result_labels)
        s.prev_capabilities = tuple(sorted(capabilities))
        s.prev_injection_score = call.result_injection_score
        _extend(s.result_labels, call.result_labels, self.limits.max_items)
        _extend(s.capabilities, sorted(capabilities), self.limits.max_items)
        _extend(s.servers, (call.server,) if call.server else (), self.limits.max_items)
        while len(self._sessions) > self.limits.max_sessions:
            self._sessions.popitem(last=False)
        if call.destinations:
            known = self._destinations.setdefault(call.agent_id, OrderedDict())
            if call.agent_id in self._destination_calls or len(self._destination_calls) < self.limits.max_agents:
                self._destination_calls[call.agent_id] = self._destination_calls.get(call.agent_id, 0) + 1
            self._destinations.move_to_end(call.agent_id)
            for d in destination_keys(call.destinations):
                known[d] = None
                known.move_to_end(d)
            while len(known) > self.limits.max_destinations:
                known.popitem(last=False)
            while len(self._destinations) > self.limits.max_agents:
                self._destinations.popitem(last=False)

    def expire(self, now_ns: int) -> None:
        """Forget sessions idle for longer than the TTL (event time)."""
        cutoff = now_ns - self.limits.session_ttl_ns
        if self._oldest_ns is not None and cutoff <= self._oldest_ns:
            return  # nothing can be idle yet: no scan of every session on every batch
        for key in [k for k, s in self._sessions.items() if s.last_ns < cutoff]:
            del self._sessions[key]
        self._oldest_ns = min((s.last_ns for s in self._sessions.values()), default=now_ns)

    def snapshot(self) -> dict[str, Any]:
        return {
            "sessions": [
                [k, s.last_ns, s.calls, s.prev_tool, s.prev_server, list(s.prev_result_labels),
                 list(s.prev_capabilities), s.result_labels, s.capabilities, s.servers, s.prev_injection_score]
                for k, s in self._sessions.items()
            ],
            "destinations": {a: list(d) for a, d in self._destinations.items()},
            "destination_calls": dict(self._destination_calls),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._sessions = OrderedDict()
        self._oldest_ns = None  # unknown after a restore: the next expire scans
        for k, last, calls, pt, ps, prl, pc, rl, caps, servers, *rest in state.get("sessions", []):
            # ``rest``: the previous result's injection score (absent in states saved before it was kept)
            score = float(rest[0]) if rest else 0.0
            self._sessions[k] = _Session(last, calls, pt, ps, tuple(prl), tuple(pc), score, list(rl), list(caps),
                                         list(servers))
        self._destinations = OrderedDict(
            (a, OrderedDict.fromkeys(d)) for a, d in state.get("destinations", {}).items()
        )
        # States saved before the count was kept: an agent with known destinations is past warm-up.
        self._destination_calls = {str(a): int(n) for a, n in state.get("destination_calls", {}).items()} or {
            a: self.limits.destination_warmup_calls for a in self._destinations}


def _key(call: ToolCall) -> str:
    return f"{call.agent_id}\x1f{call.session_id}"


def _extend(seen: list[str], new: Any, cap: int) -> None:
    for v in new:
        if v not in seen:
            seen.append(v)
            if len(seen) > cap:
                del seen[0]
