"""Plain JSON-lines of tool calls: one ``ToolCall`` as a JSON object per line (docs/replay.md).

Field names are ``ToolCall``'s; ``time_ns``, ``agent_id`` and ``tool`` are required. ``args_json`` is
kept only when the line says ``"redacted": true`` (arguments already passed toolwatch's redaction);
otherwise it is dropped, so a recording with raw arguments never reaches the store or an alert.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from toolwatch.detectors.events import ToolCall

REQUIRED = ("time_ns", "agent_id", "tool")
MAX_TEXT = 64 * 1024
_INTS = {"time_ns", "duration_ns", "args_bytes", "result_bytes"}
_FLOATS = {"result_injection_score"}
_STR_TUPLES = {"args_labels", "result_labels", "args_fingerprints", "result_fingerprints", "destinations"}
_INT_TUPLES = {"args_sketch", "result_sketch"}
_FIELDS = {f.name for f in fields(ToolCall)}
_EXTRA = {"redacted"}


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"field {name!r} must be a whole number, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"field {name!r} must not be negative, got {value}")
    return value


def _str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"field {name!r} must be a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise ValueError(f"field {name!r} is longer than {MAX_TEXT} characters")
    return value


def _list(name: str, value: Any, item: Any) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise ValueError(f"field {name!r} must be a JSON array, got {type(value).__name__}")
    return tuple(item(f"{name}[{i}]", v) for i, v in enumerate(value))


def _sketch_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"field {name!r} must be a whole number, got {type(value).__name__}")
    return value


def toolcall_from_dict(data: Any) -> ToolCall:
    """Validate one decoded line; ``ValueError`` names the field that is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"a tool-call line must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - _FIELDS - _EXTRA)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(map(repr, unknown))}; fields are those of ToolCall (docs/replay.md)")
    for name in REQUIRED:
        if name not in data:
            raise ValueError(f"missing required field {name!r}")
    redacted = data.get("redacted", False)
    if not isinstance(redacted, bool):
        raise ValueError("field 'redacted' must be true or false")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name in _EXTRA:
            continue
        if name in _INTS:
            kwargs[name] = _int(name, value)
        elif name in _FLOATS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"field {name!r} must be a number in [0, 1]")
            kwargs[name] = float(value)
        elif name in _STR_TUPLES:
            kwargs[name] = _list(name, value, _str)
        elif name in _INT_TUPLES:
            kwargs[name] = _list(name, value, _sketch_int)
        else:
            kwargs[name] = _str(name, value)
    for name in ("agent_id", "tool"):
        if not kwargs[name]:
            raise ValueError(f"field {name!r} must not be empty")
    if not redacted:
        kwargs.pop("args_json", None)
    return ToolCall(**kwargs)


def toolcall_to_dict(call: ToolCall) -> dict[str, Any]:
    """The line format for one call (only non-default fields); ``redacted`` is set: args are redacted."""
    out: dict[str, Any] = {}
    for f in fields(ToolCall):
        value = getattr(call, f.name)
        if value != f.default:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    for name in REQUIRED:
        out.setdefault(name, getattr(call, name))
    out["redacted"] = True
    return out
