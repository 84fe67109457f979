"""main's worker_frames encoder at 964c8dc, frozen: the reference the A/B test holds the frame
encoding (``calls_to_columns``) to (tests only). The rest of the module is not compared, so not kept."""

from __future__ import annotations

from array import array
from dataclasses import fields
from itertools import repeat
from operator import attrgetter, is_
from typing import Any

from toolwatch.detectors.events import ToolCall

_CALL_FIELDS = tuple(f.name for f in fields(ToolCall))
_CALL_COLUMNS = (*_CALL_FIELDS, "token")
_call_columns = attrgetter(*_CALL_COLUMNS)


# How a column of a request's calls travels (the first item of its entry):
SAME = 0
"""(SAME, value): every call holds this very object (``is``: equal ints and floats may differ in type or sign)."""
INDEXED = 1
"""(INDEXED, values, indexes): the column is ``values[i] for i in indexes`` (``indexes`` bytes when
there are at most 256 values: one object to unmarshal, whose items are ints Python keeps anyway);
only for columns whose values are all str, or all tuples of str (the worker checks), so ``Canon``
may take them as they are."""
PLAIN = 2
"""(PLAIN, values): one value per call."""
INTS = 3
"""(INTS, data): a column of ints (exactly ``int``, 64-bit) as the bytes of an ``array('q')``, which
makes the ints faster than ``marshal`` reads them one by one (event times take five 15-bit digits)."""
_INT64 = array("q").itemsize == 8

_TYPE = {f.name: f.type for f in fields(ToolCall)} | {"token": "str"}
_TEXT = frozenset(i for i, name in enumerate(_CALL_COLUMNS) if _TYPE[name] == "str")
_TEXTS = frozenset(i for i, name in enumerate(_CALL_COLUMNS) if _TYPE[name] == "tuple[str, ...]")
"""Columns of str and of tuples of str: the only ones whose equal values are sent as one (equal str
are also of one type, unlike ints and floats: ``1 == 1.0 == True``, ``0.0 == -0.0``)."""
_INT = frozenset(i for i, name in enumerate(_CALL_COLUMNS) if _TYPE[name] == "int")
_CANONICAL = frozenset(
    _CALL_COLUMNS.index(name)
    for name in ("agent_id", "tool", "server", "session_id", "args_json", "token", "args_labels",
                 "result_labels", "args_fingerprints", "result_fingerprints", "destinations", "source")
)  # fmt: skip
"""Columns whose values the daemon makes one object across requests (``Canon``): the keys of the
detectors' dicts, which compare an identical key without reading its characters."""


def _texts_only(values: tuple[Any, ...], tuples: bool) -> bool:
    if tuples:
        return all(type(v) is tuple for v in values) and all(type(x) is str for v in values for x in v)
    return all(type(v) is str for v in values)


def _column(col: tuple[Any, ...], i: int) -> tuple[Any, ...]:
    first = col[0]
    if all(map(is_, col, repeat(first))):
        return (SAME, first)
    if i in _TEXT or i in _TEXTS:
        values = tuple(dict.fromkeys(col))
        # Columns the daemon keeps one object per value of (``Canon``) go indexed even without repeats.
        if (len(values) < len(col) or i in _CANONICAL) and _texts_only(values, i in _TEXTS):
            if len(values) == 1:
                return (SAME, first)
            where = {v: n for n, v in enumerate(values)}
            indexes = list(map(where.__getitem__, col))
            return (INDEXED, values, bytes(indexes) if len(values) <= 256 else tuple(indexes))
    elif i in _INT and _INT64 and set(map(type, col)) == {int} and -(1 << 63) <= min(col) and max(col) < 1 << 63:
        return (INTS, array("q", col).tobytes())
    return (PLAIN, col)


def calls_to_columns(calls: list[ToolCall]) -> tuple[int, tuple[tuple[Any, ...], ...]]:
    """(number of calls, one entry per column of ``_CALL_COLUMNS``): what the daemon rebuilds fastest.

    The daemon's interpreter is the bottleneck and the worker has CPU to spare (issue #4), so the
    worker finds what repeats: a column whose calls all hold one object is sent once (defaults,
    per-request constants such as ``source``); a text column with repeated values (and every
    ``_CANONICAL`` one) is sent as its distinct values and an index per call, so ``marshal.loads``
    allocates one object per distinct value instead of one per call; int columns go packed.
    Values are unchanged, and so are their types.
    """
    if not calls:
        return (0, ())
    cols = zip(*map(_call_columns, calls))
    return (len(calls), tuple(map(_column, cols, range(len(_CALL_COLUMNS)))))
