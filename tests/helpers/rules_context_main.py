# Frozen copy of main's detectors/rules/context.py (54230ad), on the frozen compiler (rules_compile_main): the A/B reference for the rule engine. Imports made absolute.
"""Session context for conditions: the previous call, what the session saw, new destinations.

Bounded: an LRU of sessions, capped sets per session and per agent; sessions expire in event
time, so replaying recorded traffic gives the same answers as live traffic.

``walk`` is the hot path: it learns from every call of a batch in one loop and builds a
(lazy) context only for the calls some rule may match; ``context``/``learn`` do the same for
one call at a time.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Callable, Sequence

from toolwatch.detectors.events import ToolCall, destination_keys
from tests.helpers.rules_compile_main import ToolPlan
from toolwatch.detectors.rules.fields import EvalContext


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


_NO_CALL = ToolCall(time_ns=0, agent_id="", tool="")


class _Session:
    """What one session has seen; ``first`` builds it from its first call in one step."""

    __slots__ = ("last_ns", "calls", "prev", "prev_capabilities", "result_labels", "capabilities", "servers", "seen")

    def __init__(self, last_ns: int = 0, calls: int = 0, prev: ToolCall = _NO_CALL,
                 prev_capabilities: tuple[str, ...] = (), result_labels: list[str] | None = None,
                 capabilities: list[str] | None = None, servers: list[str] | None = None,
                 seen: set[ToolPlan] | tuple[()] = ()) -> None:
        self.last_ns = last_ns
        self.calls = calls
        self.prev = prev
        """The previous call itself (its tool, server, result labels and score are what ``prev.*`` read)."""
        self.prev_capabilities = prev_capabilities
        self.result_labels = result_labels if result_labels is not None else []
        self.capabilities = capabilities if capabilities is not None else []
        self.servers = servers if servers is not None else []
        self.seen = seen
        """Tool plans whose capabilities and server are already in the lists, so a repeat call of the
        same tool skips the list walk; ``()`` (walk every time) once a list dropped an item."""


def _first(call: ToolCall, plan: ToolPlan, cap: int) -> _Session:
    """A session after its first call: what ``learn`` gives a fresh session, in one step."""
    caps = plan.sorted_capabilities  # sorted and distinct
    if len(caps) > cap or call.result_labels and len(call.result_labels) > cap:
        s = _Session(seen=set())
        s.calls, s.last_ns, s.prev, s.prev_capabilities = 1, max(0, call.time_ns), call, caps
        _extend(s.result_labels, call.result_labels, cap)
        if not (_extend(s.capabilities, caps, cap) and _extend(s.servers, (call.server,) if call.server else (), cap)):
            s.seen = ()
        return s
    labels = list(dict.fromkeys(call.result_labels)) if call.result_labels else []
    return _Session(max(0, call.time_ns), 1, call, caps, labels, list(caps), [call.server] if call.server else [], {plan})


class LazyContext:
    """The ``EvalContext`` of one call, computed field by field on first read.

    Same attribute names as ``EvalContext``, so ``FIELDS`` getters, templates and correlations
    read either. Valid until the call is learnt (the session it reads then moves on).
    """

    __slots__ = ("call", "capabilities", "_s", "_owner", "_new")

    def __init__(self, call: ToolCall, capabilities: tuple[str, ...], session: _Session | None,
                 owner: "SessionContext") -> None:
        self.call = call
        self.capabilities = capabilities
        self._s = session
        self._owner = owner
        self._new: tuple[str, ...] | None = None

    @property
    def prev_tool(self) -> str:
        return self._s.prev.tool if self._s is not None else ""

    @property
    def prev_server(self) -> str:
        return self._s.prev.server if self._s is not None else ""

    @property
    def prev_result_labels(self) -> tuple[str, ...]:
        return tuple(self._s.prev.result_labels) if self._s is not None else ()

    @property
    def prev_injection_score(self) -> float:
        return self._s.prev.result_injection_score if self._s is not None else 0.0

    @property
    def prev_capabilities(self) -> tuple[str, ...]:
        return self._s.prev_capabilities if self._s is not None else ()

    @property
    def session_calls(self) -> int:
        return self._s.calls if self._s is not None else 0

    @property
    def session_result_labels(self) -> tuple[str, ...]:
        return tuple(self._s.result_labels) if self._s is not None else ()

    @property
    def session_capabilities(self) -> tuple[str, ...]:
        return tuple(self._s.capabilities) if self._s is not None else ()

    @property
    def session_servers(self) -> tuple[str, ...]:
        return tuple(self._s.servers) if self._s is not None else ()

    @property
    def new_destinations(self) -> tuple[str, ...]:
        if self._new is None:
            self._new = self._owner.new_destinations(self.call) if self.call.destinations else ()
        return self._new


_AGENT = attrgetter("agent_id")
_SESSION = attrgetter("session_id")
_KEY = "{}\x1f{}".format
"""``agent_id``, unit separator, ``session_id``: the session key (also in snapshots)."""

Visit = Callable[[LazyContext, ToolPlan], None]


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

    # --- the batch path ----------------------------------------------------------------------
    def walk(self, calls: Sequence[ToolCall], plans: Sequence[ToolPlan], visit: Visit) -> None:
        """Learn from ``calls`` in order; before learning each call that its tool's plan says
        may match a rule, call ``visit`` with the call's context (the state before the call)."""
        keys = list(map(_KEY, map(_AGENT, calls), map(_SESSION, calls)))
        sessions = self._sessions
        get, move = sessions.get, sessions.move_to_end
        ttl = self.limits.session_ttl_ns
        max_sessions, cap = self.limits.max_sessions, self.limits.max_items
        oldest = self._oldest_ns
        for call, key, plan in zip(calls, keys, plans):
            s = get(key)
            t = call.time_ns
            if s is not None and t - s.last_ns > ttl:
                s = None
            if plan.rules and (plan.guard is None or plan.guard(call)):
                visit(LazyContext(call, plan.sorted_capabilities, s, self), plan)
            # learn (as ``learn`` does, inlined: this runs for every call)
            if s is None:
                sessions[key] = s = _first(call, plan, cap)
                move(key)
                if len(sessions) > max_sessions:
                    while len(sessions) > max_sessions:
                        sessions.popitem(last=False)
                if oldest is not None and s.last_ns < oldest:
                    oldest = s.last_ns
                if call.destinations:
                    self._learn_destinations(call)
                continue
            move(key)
            if t > s.last_ns:  # a live session's last_ns only grows: it cannot fall below ``oldest``
                s.last_ns = t
            s.calls += 1
            s.prev = call
            s.prev_capabilities = plan.sorted_capabilities
            if call.result_labels:
                _extend(s.result_labels, call.result_labels, cap)
            if plan not in s.seen:
                self._learn_tool(s, plan.sorted_capabilities, call.server, plan)
            if call.destinations:
                self._learn_destinations(call)
        self._oldest_ns = oldest

    # --- one call at a time ------------------------------------------------------------------
    def context(self, call: ToolCall, capabilities: frozenset[str]) -> EvalContext:
        s = self._session(call)
        new = self.new_destinations(call)
        if s is None:
            return EvalContext(call=call, capabilities=capabilities, new_destinations=new)
        return EvalContext(
            call=call,
            capabilities=capabilities,
            prev_tool=s.prev.tool,
            prev_server=s.prev.server,
            prev_result_labels=tuple(s.prev.result_labels),
            prev_capabilities=s.prev_capabilities,
            prev_injection_score=s.prev.result_injection_score,
            session_calls=s.calls,
            session_result_labels=tuple(s.result_labels),
            session_capabilities=tuple(s.capabilities),
            session_servers=tuple(s.servers),
            new_destinations=new,
        )

    def learn(self, call: ToolCall, capabilities: frozenset[str]) -> None:
        key = _KEY(call.agent_id, call.session_id)
        s = self._sessions.get(key)
        if s is None or call.time_ns - s.last_ns > self.limits.session_ttl_ns:
            s = _Session(seen=set())
        self._sessions[key] = s
        self._sessions.move_to_end(key)
        s.last_ns = max(s.last_ns, call.time_ns)
        if self._oldest_ns is not None and s.last_ns < self._oldest_ns:
            self._oldest_ns = s.last_ns
        s.calls += 1
        s.prev = call
        s.prev_capabilities = tuple(sorted(capabilities))
        _extend(s.result_labels, call.result_labels, self.limits.max_items)
        self._learn_tool(s, s.prev_capabilities, call.server, None)
        while len(self._sessions) > self.limits.max_sessions:
            self._sessions.popitem(last=False)
        if call.destinations:
            self._learn_destinations(call)

    def _session(self, call: ToolCall) -> _Session | None:
        s = self._sessions.get(_KEY(call.agent_id, call.session_id))
        if s is not None and call.time_ns - s.last_ns > self.limits.session_ttl_ns:
            return None
        return s

    def _learn_tool(self, s: _Session, capabilities: tuple[str, ...], server: str, plan: ToolPlan | None) -> None:
        cap = self.limits.max_items
        kept = _extend(s.capabilities, capabilities, cap)
        kept = _extend(s.servers, (server,) if server else (), cap) and kept
        if not kept:
            s.seen = ()
        elif plan is not None and type(s.seen) is set:
            s.seen.add(plan)

    def new_destinations(self, call: ToolCall) -> tuple[str, ...]:
        """Destinations of ``call`` this agent never used (none while the agent warms up)."""
        if self._destination_calls.get(call.agent_id, 0) < self.limits.destination_warmup_calls:
            return ()
        known = self._destinations.get(call.agent_id, {})
        return tuple(d for d in destination_keys(call.destinations) if d not in known)

    def _learn_destinations(self, call: ToolCall) -> None:
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
                [k, s.last_ns, s.calls, s.prev.tool, s.prev.server, list(s.prev.result_labels),
                 list(s.prev_capabilities), list(s.result_labels), list(s.capabilities), list(s.servers),
                 s.prev.result_injection_score]
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
            prev = ToolCall(time_ns=last, agent_id="", tool=pt, server=ps, result_labels=tuple(prl),
                            result_injection_score=score)
            self._sessions[k] = _Session(last, calls, prev, tuple(pc), list(rl), list(caps), list(servers), set())
        self._destinations = OrderedDict(
            (a, OrderedDict.fromkeys(d)) for a, d in state.get("destinations", {}).items()
        )
        # States saved before the count was kept: an agent with known destinations is past warm-up.
        self._destination_calls = {str(a): int(n) for a, n in state.get("destination_calls", {}).items()} or {
            a: self.limits.destination_warmup_calls for a in self._destinations}


def _extend(seen: list[str], new: Any, cap: int) -> bool:
    """Append the values not yet in ``seen``, oldest dropped past ``cap``; False if one was dropped."""
    kept = True
    for v in new:
        if v not in seen:
            seen.append(v)
            if len(seen) > cap:
                del seen[0]
                kept = False
    return kept
