"""Sigma-style correlation windows: event_count, value_count, temporal_ordered.

State is per correlation and group key, bounded (LRU of groups, capped events per group) and
aged in event time. Each correlation fires once per completed window, then starts afresh, so one
burst is one finding rather than one per later event.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from operator import attrgetter
from typing import AbstractSet, Any, Callable

from .fields import DIRECT, FIELDS, EvalContext
from .model import Correlation


@dataclass(slots=True, frozen=True)
class Fired:
    """A completed correlation: the calls involved and what was counted."""

    correlation: Correlation
    group: tuple[str, ...]
    span_ids: tuple[str, ...]
    count: int
    values: tuple[str, ...] = ()


class CorrelationWindows:
    """Window state of every correlation of a rule set."""

    def __init__(self, max_groups: int = 10_000, max_events: int = 1_000) -> None:
        if max_groups < 1 or max_events < 1:
            raise ValueError("rules.max_groups and rules.max_events must be at least 1")
        self.max_groups = max_groups
        self.max_events = max_events
        # name -> signature, groups: group key json -> state (JSON-safe lists)
        self._state: dict[str, dict[str, Any]] = {}
        self._group_getters: dict[tuple[str, ...], Callable[[Any], tuple[str, ...]]] = {}
        self._keys: dict[tuple[str, ...], str] = {}
        """Group -> its JSON key: a cache (cleared when large), groups repeat from call to call."""

    def keep_only(self, correlations: tuple[Correlation, ...]) -> None:
        """After a reload: keep windows of unchanged correlations, drop the rest."""
        wanted = {c.name: list(map(_jsonable, c.signature())) for c in correlations}
        self._state = {n: s for n, s in self._state.items() if wanted.get(n) == s["signature"]}

    def observe(self, corr: Correlation, matched: AbstractSet[str], ctx: EvalContext) -> Fired | None:
        """Feed one call that matched the rules in ``matched``; returns a finding when complete."""
        if matched.isdisjoint(corr.rules):
            return None
        entry = self._state.get(corr.name)
        if entry is None:
            entry = self._state[corr.name] = {"signature": list(map(_jsonable, corr.signature())),
                                              "groups": OrderedDict()}
        groups: OrderedDict[str, Any] = entry["groups"]
        get = self._group_getters.get(corr.group_by)
        if get is None:
            get = self._group_getters[corr.group_by] = _group_getter(corr.group_by)
        group = get(ctx)
        key = self._keys.get(group)
        if key is None:
            if len(self._keys) >= 4 * self.max_groups:
                self._keys.clear()
            key = self._keys[group] = _group_key(group)
        if corr.type == "temporal_ordered" and corr.rules[0] not in matched:
            chain = groups.get(key)
            if chain is None or not any(chain):
                # Nothing started: a later step alone advances nothing (the common send_out case).
                if chain is None:
                    groups[key] = [None] * len(corr.rules)
                else:
                    groups.move_to_end(key)
                while len(groups) > self.max_groups:
                    groups.popitem(last=False)
                return None
        now = ctx.call.time_ns
        span = ctx.call.span_id
        if corr.type == "temporal_ordered":
            fired = self._temporal(corr, groups, key, matched, now, span)
        else:
            fired = self._count(corr, groups, key, ctx, now, span)
        if key in groups:
            groups.move_to_end(key)
        while len(groups) > self.max_groups:
            groups.popitem(last=False)
        if fired is None:
            return None
        spans, count, values = fired
        return Fired(corr, group, tuple(s for s in spans if s)[-20:], count, values)

    def _count(self, corr: Correlation, groups: Any, key: str, ctx: EvalContext, now: int, span: str):
        events: list[list[Any]] = groups.setdefault(key, [])
        if corr.type == "value_count":
            raw = FIELDS[corr.value_field].get(ctx)
            values = raw if isinstance(raw, tuple) else (str(raw),)
            events.extend([now, span, v] for v in values if v not in ("", "-"))
        else:
            events.append([now, span, ""])
        cutoff = now - corr.timespan_ns
        events[:] = [e for e in events if e[0] >= cutoff][-self.max_events:]
        if corr.type == "value_count":
            distinct = list(dict.fromkeys(e[2] for e in events))
            count = len(distinct)
        else:
            distinct, count = [], len(events)
        if count < corr.min_count:
            return None
        spans = tuple(dict.fromkeys(e[1] for e in events))
        del groups[key]
        return spans, count, tuple(distinct[:20])

    def _temporal(self, corr: Correlation, groups: Any, key: str, matched: AbstractSet[str], now: int, span: str):
        # chain[i] = [start_ns, [span ids]] of the most recent partial sequence reaching step i.
        chain: list[Any] = groups.setdefault(key, [None] * len(corr.rules))
        cutoff = now - corr.timespan_ns
        for i in range(len(corr.rules) - 1, -1, -1):  # backwards: one call advances one step only
            if corr.rules[i] not in matched:
                continue
            if i == 0:
                chain[0] = [now, [span]]
                continue
            prev = chain[i - 1]
            if prev is None or prev[0] < cutoff:
                continue
            candidate = [prev[0], (prev[1] + [span])[-20:]]
            if chain[i] is None or chain[i][0] <= candidate[0]:
                chain[i] = candidate
        last = chain[-1]
        if last is not None:
            del groups[key]
            return tuple(last[1]), len(corr.rules), ()
        return None

    def snapshot(self) -> dict[str, Any]:
        return {n: {"signature": s["signature"], "groups": [[k, v] for k, v in s["groups"].items()]}
                for n, s in self._state.items()}

    def restore(self, state: dict[str, Any]) -> None:
        self._state = {
            n: {"signature": s["signature"], "groups": OrderedDict((k, v) for k, v in s["groups"])}
            for n, s in state.items()
        }


def _group_getter(fields: tuple[str, ...]) -> Callable[[Any], tuple[str, ...]]:
    """The group of a context as text values; plain call attributes are read by one ``attrgetter``."""
    paths = [DIRECT.get(f) for f in fields]
    if fields and all(paths):
        get = attrgetter(*paths)  # type: ignore[arg-type]
        if len(fields) == 1:
            return lambda ctx: (str(get(ctx)),)
        return lambda ctx: tuple(map(str, get(ctx)))
    getters = [FIELDS[f].get for f in fields]
    return lambda ctx: tuple([str(g(ctx)) for g in getters])


def _group_key(group: tuple[str, ...]) -> str:
    """``json.dumps(group)`` (the key in state and snapshots), without the encoder for plain text."""
    if group and all(v.isascii() and v.isprintable() and '"' not in v and "\\" not in v for v in group):
        return '["' + '", "'.join(group) + '"]'
    return json.dumps(group)


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
