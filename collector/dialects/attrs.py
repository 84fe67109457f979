"""Typed readers over one span's attributes, keyed by name.

The hot path of ingest: a span's attributes are read into a ``{key: AnyValue}`` dict once, then
only the keys a dialect needs are converted, and strings (by far the common case) skip the
generic ``AnyValue`` walk.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from opentelemetry.proto.common.v1.common_pb2 import AnyValue

Attrs = Mapping[str, AnyValue]
MAX_NAME = 256
MAX_DEPTH = 32
"""Deeper nested array/kvlist values are cut off here: OTLP allows any depth, we need none."""


def any_value(av: AnyValue, depth: int = 0) -> Any:
    """An ``AnyValue`` as plain Python; bytes as hex; nesting cut at ``MAX_DEPTH``."""
    kind = av.WhichOneof("value")
    if kind is None:
        return None
    if kind == "string_value":
        return av.string_value
    if kind == "array_value":
        if depth >= MAX_DEPTH:
            return None
        return [any_value(v, depth + 1) for v in av.array_value.values]
    if kind == "kvlist_value":
        if depth >= MAX_DEPTH:
            return None
        return {kv.key: any_value(kv.value, depth + 1) for kv in av.kvlist_value.values}
    if kind == "bytes_value":
        return av.bytes_value.hex()
    return getattr(av, kind)


def text(attrs: Attrs, key: str, limit: int = MAX_NAME) -> str:
    """The attribute as text (non-strings JSON-encoded), at most ``limit`` characters; '' if absent."""
    av = attrs.get(key)
    if av is None:
        return ""
    val = av.string_value  # the common case, without asking which value is set
    if val:
        return val if len(val) <= limit else val[:limit]
    val = any_value(av)
    if val is None:
        return ""
    if isinstance(val, (list, dict)):
        return json.dumps(val, ensure_ascii=False)[:limit]
    return str(val)[:limit]


def first_text(attrs: Attrs, keys: tuple[str, ...], limit: int = MAX_NAME) -> str:
    for key in keys:
        val = text(attrs, key, limit)
        if val:
            return val
    return ""


def string_is(attrs: Attrs, key: str, expected: str) -> bool:
    """Cheap equality test on a string attribute (no conversion of anything else)."""
    av = attrs.get(key)
    return av is not None and av.string_value == expected


def count(attrs: Attrs, key: str) -> int:
    """A non-negative integer (ints, floats and numeric strings accepted); 0 if absent or wrong."""
    av = attrs.get(key)
    if av is None:
        return 0
    val = av.int_value  # the common case
    if val > 0:
        return val
    val = any_value(av)
    if isinstance(val, (list, dict)):
        return 0
    try:
        return max(0, int(val))
    except (TypeError, ValueError, OverflowError):
        return 0


def unit_float(attrs: Attrs, key: str) -> float:
    """A score in [0, 1]; anything else (wrong type, NaN, out of range) reads as 0."""
    av = attrs.get(key)
    if av is None:
        return 0.0
    val = any_value(av)
    if isinstance(val, (list, dict)):
        return 0.0
    try:
        num = float(val)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return num if 0.0 <= num <= 1.0 else 0.0


def strings(attrs: Attrs, key: str, limit: int = 256) -> tuple[str, ...]:
    """A string array (or a comma-separated string) as a tuple of at most ``limit`` short strings."""
    av = attrs.get(key)
    if av is None:
        return ()
    kind = av.WhichOneof("value")
    if kind == "string_value":
        return tuple(v[:MAX_NAME] for v in av.string_value.split(",")[:limit] if v)
    if kind != "array_value":
        return ()
    out = []
    for v in av.array_value.values[:limit]:
        k = v.WhichOneof("value")
        if k == "string_value":
            out.append(v.string_value[:MAX_NAME])
        elif k in ("int_value", "double_value", "bool_value"):
            out.append(str(getattr(v, k))[:MAX_NAME])
    return tuple(out)


def ints(attrs: Attrs, key: str, limit: int = 256) -> tuple[int, ...]:
    """An integer array; () if absent or if any element is not an integer."""
    av = attrs.get(key)
    if av is None or av.WhichOneof("value") != "array_value":
        return ()
    out = []
    for v in av.array_value.values[:limit]:
        if v.WhichOneof("value") != "int_value":
            return ()
        out.append(v.int_value)
    return tuple(out)


def is_true(attrs: Attrs, key: str) -> bool:
    av = attrs.get(key)
    return av is not None and av.WhichOneof("value") == "bool_value" and av.bool_value
