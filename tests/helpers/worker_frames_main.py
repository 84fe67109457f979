"""main's worker_frames at 964c8dc, frozen: the reference the A/B tests hold the frame encoding to (tests only)."""

from __future__ import annotations

import marshal
import struct
from array import array
from dataclasses import fields
from itertools import repeat
from operator import attrgetter, is_, itemgetter
from typing import Any, Iterable

from toolwatch.detectors.events import ToolCall, ToolDefinition, ToolListing

from toolwatch.collector.normalize import Normalized

__all__ = [
    "CONFIG", "INGEST", "READY", "REJECTED", "STOP", "REPLY", "OK", "OVERLOADED", "UNAVAILABLE",
    "HEADER", "frame", "unframe", "calls_to_columns", "columns_to_calls", "Canon", "listings_to_tuples",
    "tuples_to_listings", "ingest_frame", "read_ingest",
]  # fmt: skip

# Kinds, worker -> daemon
READY = 1
"""The worker's HTTP server accepts on the listening socket."""
INGEST = 2
"""A normalised request: (INGEST, request id, receiver, calls, listings, spans, rejected, errors,
decode_rejected, decode_errors); the daemon answers with a REPLY."""
REJECTED = 3
"""(REJECTED, receiver, reason): a request the worker refused (401/413/415/400/queue_full), to count."""
# Kinds, daemon -> worker
CONFIG = 10
"""The worker's settings (the first frame it reads), secrets included: never argv or environment."""
REPLY = 11
"""(REPLY, request id, outcome, spans, rejected, message)."""
STOP = 12
"""Stop accepting, finish the requests in flight, exit."""
# Outcomes of an INGEST
OK, OVERLOADED, UNAVAILABLE = 0, 1, 2

HEADER = struct.Struct("!I")
_MAX_FRAME = 0xFFFF_FFFF

_CALL_FIELDS = tuple(f.name for f in fields(ToolCall))
_LISTING_FIELDS = tuple(f.name for f in fields(ToolListing))
_DEFINITION_FIELDS = tuple(f.name for f in fields(ToolDefinition))
_CALL_COLUMNS = (*_CALL_FIELDS, "token")
"""A call's columns in a frame: its fields in declaration order, then its ``token``, which the
worker's call already holds (the daemon need not format it again)."""
_call_columns = attrgetter(*_CALL_COLUMNS)
_listing_values = attrgetter(*_LISTING_FIELDS)
_definition_values = attrgetter(*_DEFINITION_FIELDS)
_TOOLS = _LISTING_FIELDS.index("tools")


def frame(msg: tuple[Any, ...]) -> bytes:
    """One frame: length prefix and marshalled ``msg`` (primitives, tuples, lists, dicts only)."""
    body = marshal.dumps(msg)
    if len(body) > _MAX_FRAME:
        raise ValueError(f"frame of {len(body)} bytes exceeds the 4 GiB frame limit")
    return HEADER.pack(len(body)) + body


def unframe(body: bytes) -> tuple[Any, ...]:
    """The message of a frame's body (without its length prefix)."""
    msg = marshal.loads(body)
    if not isinstance(msg, tuple) or not msg:
        raise ValueError(f"not a frame: {type(msg).__name__}")
    return msg


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


class Canon:
    """One object per equal value across the requests of the daemon's workers (at most ``limit`` kept).

    Each frame unmarshals its own strings: without this, the same agent, tool or session of two
    requests are two objects, and every dict lookup the detectors make by them compares characters
    instead of identity (about 1 µs of detector CPU per call on the fleet workload). Dropping the
    whole table when it is full keeps it bounded (sessions keep coming) and costs no correctness.
    """

    def __init__(self, limit: int = 1 << 16) -> None:
        self.limit = limit
        self._objects: dict[Any, Any] = {}

    def __call__(self, values: tuple[Any, ...]) -> tuple[Any, ...]:
        objects = self._objects
        if len(objects) > self.limit:
            objects.clear()
        return tuple(map(objects.setdefault, values, values))


def _unpack(entry: tuple[Any, ...], i: int, n: int, canon: Canon | None) -> Any:
    kind = entry[0]
    if kind == SAME:
        (_, value) = entry
        if canon is not None and i in _CANONICAL and _texts_only((value,), i in _TEXTS):
            (value,) = canon((value,))
        return repeat(value, n)
    if kind == INDEXED:
        (_, values, indexes) = entry
        if canon is not None and i in _CANONICAL:
            values = canon(values)
        if len(indexes) == 1:
            return (values[indexes[0]],)
        return itemgetter(*indexes)(values)
    if kind == PLAIN:
        (_, values) = entry
        return values
    if kind == INTS:
        (_, data) = entry
        return array("q", data).tolist()
    raise ValueError(f"call column {_CALL_COLUMNS[i]!r}: unknown encoding {kind!r}")


def columns_to_calls(
    encoded: tuple[int, tuple[tuple[Any, ...], ...]], canon: Canon | None = None
) -> list[ToolCall]:
    """The calls of ``calls_to_columns``, equal to the worker's and with the same ``token``.

    Raises ``ValueError`` (or ``IndexError``) for columns that do not fit together.
    """
    n, entries = encoded
    if not n:
        return []
    if len(entries) != len(_CALL_COLUMNS):
        raise ValueError(f"a frame's calls have {len(entries)} columns; this daemon expects {len(_CALL_COLUMNS)}")
    cols = [_unpack(entry, i, n, canon) for i, entry in enumerate(entries)]
    return _build(zip(*cols, strict=True))


def _build(rows: Iterable[tuple[Any, ...]], new: Any = object.__new__, cls: type[ToolCall] = ToolCall) -> list[ToolCall]:
    """``ToolCall(*row[:-1])`` with the token ``row[-1]``, without ``__init__`` and ``__post_init__``.

    Setting the slots here costs the daemon less than the generated ``__init__`` (25 arguments) and
    ``__post_init__`` (a frame and an f-string per call). The names are checked against
    ``_CALL_COLUMNS`` when this module is imported.
    """
    out: list[ToolCall] = []
    append = out.append
    for (
        time_ns, agent_id, tool, server, session_id, duration_ns, trace_id, span_id, request_id, agent_name,
        server_address, error_type, args_json, args_bytes, result_bytes, args_labels, result_labels,
        args_fingerprints, result_fingerprints, args_sketch, result_sketch, result_injection_score, destinations,
        definition_sha256, source, token,
    ) in rows:  # fmt: skip
        call = new(cls)
        call.time_ns = time_ns
        call.agent_id = agent_id
        call.tool = tool
        call.server = server
        call.session_id = session_id
        call.duration_ns = duration_ns
        call.trace_id = trace_id
        call.span_id = span_id
        call.request_id = request_id
        call.agent_name = agent_name
        call.server_address = server_address
        call.error_type = error_type
        call.args_json = args_json
        call.args_bytes = args_bytes
        call.result_bytes = result_bytes
        call.args_labels = args_labels
        call.result_labels = result_labels
        call.args_fingerprints = args_fingerprints
        call.result_fingerprints = result_fingerprints
        call.args_sketch = args_sketch
        call.result_sketch = result_sketch
        call.result_injection_score = result_injection_score
        call.destinations = destinations
        call.definition_sha256 = definition_sha256
        call.source = source
        call.token = token
        append(call)
    return out


_code = _build.__code__
_SLOTS = {name for klass in ToolCall.__mro__ for name in getattr(klass, "__slots__", ())}
if _code.co_varnames[_code.co_argcount + 2 : _code.co_argcount + 2 + len(_CALL_COLUMNS)] != _CALL_COLUMNS or (
    _SLOTS != set(_CALL_COLUMNS)
):
    raise ImportError(
        "ToolCall's fields or slots changed: update worker_frames._build, which sets every slot itself "
        f"(expected the columns {_CALL_COLUMNS}, ToolCall has the slots {sorted(_SLOTS)})"
    )
del _code


def listings_to_tuples(listings: list[ToolListing]) -> list[tuple[Any, ...]]:
    out = []
    for listing in listings:
        row = list(_listing_values(listing))
        row[_TOOLS] = tuple(map(_definition_values, listing.tools))
        out.append(tuple(row))
    return out


def tuples_to_listings(rows: list[tuple[Any, ...]]) -> list[ToolListing]:
    out = []
    for row in rows:
        values = list(row)
        values[_TOOLS] = tuple(ToolDefinition(*d) for d in values[_TOOLS])
        out.append(ToolListing(*values))
    return out


def ingest_frame(
    request_id: int, receiver: str, norm: Normalized, decode_rejected: int, decode_errors: tuple[str, ...]
) -> bytes:
    return frame((
        INGEST, request_id, receiver, calls_to_columns(norm.calls), listings_to_tuples(norm.listings),
        norm.spans, norm.rejected, tuple(norm.errors), decode_rejected, tuple(decode_errors),
    ))  # fmt: skip


def read_ingest(msg: tuple[Any, ...], canon: Canon | None = None) -> tuple[int, str, Normalized, int, tuple[str, ...]]:
    """(request id, receiver, the worker's ``Normalized``, decode_rejected, decode_errors) of an INGEST.

    ``canon``: the daemon's ``Canon`` (one object per equal agent, tool, session... across requests).
    """
    _, request_id, receiver, calls, listings, spans, rejected, errors, decode_rejected, decode_errors = msg
    norm = Normalized(columns_to_calls(calls, canon), tuples_to_listings(listings), spans, rejected, list(errors))
    return request_id, receiver, norm, decode_rejected, tuple(decode_errors)
