"""ToolCall dicts as written in rule samples and recorded traces, read strictly.

The same reader serves inline ``samples:`` in rule files and the JSON-lines traces of
``toolwatch rules test``, so a sample means exactly what a recorded call means.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from ..events import ToolCall
from .errors import RuleError

_FIELDS = {f.name: f for f in dataclasses.fields(ToolCall)}
_TUPLE_STR = {n for n, f in _FIELDS.items() if f.type == "tuple[str, ...]"}
_TUPLE_INT = {n for n, f in _FIELDS.items() if f.type == "tuple[int, ...]"}
_INTS = {n for n, f in _FIELDS.items() if f.type == "int"}
_FLOATS = {n for n, f in _FIELDS.items() if f.type == "float"}
_ALIASES = {"t": "seconds after the sample's first event (instead of time_ns)"}
DEFAULT_AGENT = "agent-1"
DEFAULT_SESSION = "session-1"


def call_from_dict(data: Any, where: str = "", base_time_ns: int = 0) -> ToolCall:
    """Build a ToolCall from a dict; raises RuleError naming ``where`` and the bad key.

    ``t`` (seconds) may replace ``time_ns`` and counts from ``base_time_ns``; ``agent_id`` and
    ``session_id`` default to ``agent-1`` / ``session-1`` so samples stay short.
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(data, Mapping):
        raise RuleError(f"{prefix}an event must be a mapping of ToolCall fields, not {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in _FIELDS and k not in _ALIASES)
    if unknown:
        raise RuleError(f"{prefix}unknown event field {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}, t")
    if "tool" not in data:
        raise RuleError(f"{prefix}an event needs 'tool'")
    kwargs: dict[str, Any] = {"agent_id": DEFAULT_AGENT, "session_id": DEFAULT_SESSION, "time_ns": base_time_ns}
    for key, value in data.items():
        key = str(key)
        try:
            if key == "t":
                kwargs["time_ns"] = base_time_ns + int(round(_number(value) * 1e9))
            elif key in _TUPLE_STR:
                kwargs[key] = _str_tuple(value)
            elif key in _TUPLE_INT:
                kwargs[key] = tuple(_int(v) for v in _seq(value))
            elif key in _INTS:
                kwargs[key] = _int(value)
            elif key in _FLOATS:
                kwargs[key] = _number(value)
            else:
                if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                    raise ValueError("expected text")
                kwargs[key] = str(value)
        except (ValueError, TypeError, OverflowError) as e:
            raise RuleError(f"{prefix}event field {key!r}: {e}") from None
    return ToolCall(**kwargs)


def _seq(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError("expected a list")


def _str_tuple(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    items = _seq(value)
    if not all(isinstance(v, str) for v in items):
        raise ValueError("expected a list of text")
    return tuple(items)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("expected a whole number")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("expected a whole number")
    return int(value)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("expected a number")
    x = float(value)
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number")
    return x


@dataclass(slots=True, frozen=True)
class Samples:
    """Regression samples of a rule: each sample is a sequence of calls fed to a fresh engine."""

    should_fire: tuple[tuple[ToolCall, ...], ...] = ()
    should_not_fire: tuple[tuple[ToolCall, ...], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.should_fire or self.should_not_fire)


SAMPLE_START_NS = 1_700_000_000_000_000_000


def samples_from_dict(data: Any, where: str) -> Samples:
    """Read ``{should_fire: [...], should_not_fire: [...]}``; an entry is one event or a list of them."""
    if not isinstance(data, Mapping):
        raise RuleError(f"{where}: samples must be a mapping with should_fire and/or should_not_fire")
    unknown = sorted(str(k) for k in data if k not in ("should_fire", "should_not_fire"))
    if unknown:
        raise RuleError(f"{where}: unknown samples key {', '.join(unknown)}; use should_fire, should_not_fire")
    out: dict[str, tuple[tuple[ToolCall, ...], ...]] = {}
    for key in ("should_fire", "should_not_fire"):
        entries = data.get(key) or []
        if not isinstance(entries, list):
            raise RuleError(f"{where}: samples.{key} must be a list")
        seqs = []
        for i, entry in enumerate(entries):
            events = entry if isinstance(entry, list) else [entry]
            calls = []
            for j, ev in enumerate(events):
                call = call_from_dict(ev, f"{where}: samples.{key}[{i}][{j}]", SAMPLE_START_NS)
                if "t" not in ev and "time_ns" not in ev:
                    call.time_ns = SAMPLE_START_NS + j * 1_000_000_000
                calls.append(call)
            seqs.append(tuple(calls))
        out[key] = tuple(seqs)
    return Samples(**out)
