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

from ..events import ToolCall, destination_keys
from .compile import ToolPlan
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


_PAIR = attrgetter("agent_id", "session_id")
_KEY = "{}\x1f{}".format
"""``agent_id``, unit separator, ``session_id``: the session key (also in snapshots)."""

Visit = Callable[[LazyContext, ToolPlan], None]
_MAX_CACHED_KEYS = 20_000
"""Bound on each cache of keys (destination keys, session keys): both come from agents, not a fixed set."""


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
        self._destination_keys: dict[tuple[str, ...], tuple[str, ...]] = {}
        """Destinations -> their keys (``destination_keys``): a bounded cache, not state."""
        self._session_keys: dict[tuple[str, str], str] = {}
        """(agent, session) -> its session key: a bounded cache, not state."""

    # --- the batch path ----------------------------------------------------------------------
    def walk(self, calls: Sequence[ToolCall], plans: Sequence[ToolPlan], visit: Visit) -> None:
        """Learn from ``calls`` in order; before learning each call that its tool's plan says
        may match a rule, call ``visit`` with the call's context (the state before the call)."""
        keys = self._keys(calls)
        sessions = self._sessions
        get, move = sessions.get, sessions.move_to_end
        ttl = self.limits.session_ttl_ns
        max_sessions, cap = self.limits.max_sessions, self.limits.max_items
        oldest = self._oldest_ns
        learn_destinations = self._learn_destinations
        for call, key, plan in zip(calls, keys, plans):
            s = get(key)
            t = call.time_ns
            if s is not None and t - s.last_ns > ttl:
                s = None
            if plan.rules and (plan.guard is None or plan.guard(call) or (
                    plan.session_guard is not None and s is not None and plan.session_guard(s))):
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
            else:
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
                learn_destinations(call)
        self._oldest_ns = oldest

    def _keys(self, calls: Sequence[ToolCall]) -> list[str]:
        """The session key of each call: built once per (agent, session) and cached, since
        formatting one per call cost more than the rest of learning from it."""
        cache = self._session_keys
        keys = list(map(cache.get, map(_PAIR, calls)))
        if None in keys:
            if len(cache) > _MAX_CACHED_KEYS:
                cache.clear()
            find = keys.index  # to the next miss at C speed: most calls of a batch hit
            i = find(None)
            while True:
                pair = _PAIR(calls[i])
                key = cache.get(pair)
                if key is None:
                    key = cache[pair] = _KEY(*pair)
                keys[i] = key
                try:
                    i = find(None, i + 1)
                except ValueError:
                    return keys
        return keys

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
        agent = call.agent_id
        if self._destination_calls.get(agent, 0) < self.limits.destination_warmup_calls:
            return ()
        keys = self._keys_of(call.destinations)
        known = self._destinations.get(agent)
        if not known:
            return keys  # every one is new
        return tuple([d for d in keys if d not in known])

    def _keys_of(self, destinations: tuple[str, ...]) -> tuple[str, ...]:
        """``destination_keys``, cached: an agent names the same few destinations call after call."""
        try:
            keys = self._destination_keys.get(destinations)
        except TypeError:  # a list (not hashable): not cached
            return destination_keys(destinations)
        if keys is None:
            if len(self._destination_keys) >= _MAX_CACHED_KEYS:
                self._destination_keys.clear()
            keys = self._destination_keys[destinations] = destination_keys(destinations)
        return keys

    def _learn_destinations(self, call: ToolCall) -> None:
        agent = call.agent_id
        agents = self._destinations
        known = agents.get(agent)
        if known is None:
            known = agents[agent] = OrderedDict()
        else:
            agents.move_to_end(agent)
        counts = self._destination_calls
        n = counts.get(agent)
        if n is not None:
            counts[agent] = n + 1
        elif len(counts) < self.limits.max_agents:
            counts[agent] = 1
        for d in self._keys_of(call.destinations):
            if d in known:
                known.move_to_end(d)
            else:
                known[d] = None
        if len(known) > self.limits.max_destinations:
            while len(known) > self.limits.max_destinations:
                known.popitem(last=False)
        if len(agents) > self.limits.max_agents:
            while len(agents) > self.limits.max_agents:
                agents.popitem(last=False)

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
