"""Frames between the daemon and its OTLP worker processes (``otlp_processes``): stdlib ``marshal``.

A worker normalises a request itself and sends the daemon what ``Ingest.consume`` needs: the
``ToolCall``/``ToolListing`` fields as tuples of primitives, the span and rejection counts and the
error strings. ``marshal`` reads and writes tuples of str/int/float/bytes at C speed and, unlike
pickle, cannot build arbitrary objects: the daemon rebuilds the dataclasses itself. Both ends are
the same interpreter build, so marshal's version-specific format is no concern.

On the wire each frame is a 4-byte big-endian length and a marshalled tuple whose first item is
the frame's kind.
"""

from __future__ import annotations

import marshal
import struct
from array import array
from dataclasses import fields
from itertools import chain, compress, repeat
from operator import add, attrgetter, is_, itemgetter, le, mul
from typing import Any

from toolwatch.detectors.events import ToolCall, ToolDefinition, ToolListing, tool_token

from ..normalize import Normalized

__all__ = [
    "CONFIG", "INGEST", "READY", "REJECTED", "STOP", "REPLY", "OK", "OVERLOADED", "UNAVAILABLE",
    "HEADER", "frame", "unframe", "rows_to_columns", "calls_to_columns", "columns_to_calls", "Canon",
    "listings_to_tuples", "tuples_to_listings", "ingest_frame", "ingest_message", "read_ingest", "ValueTable",
    "TableMirror", "OutOfStep",
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
TABLED = 4
"""(TABLED, slots, indexes): an INDEXED entry of a ``_CANONICAL`` column whose values are slots of the
connection's value table (``ValueTable``), as the bytes of an ``array('H')``; ``indexes`` as for INDEXED.
Only in frames built with a table, whose calls carry the table's new values (``ValueTable.encode``)."""

_TYPE = {f.name: f.type for f in fields(ToolCall)} | {"token": "str"}
_CANONICAL = frozenset(
    _CALL_COLUMNS.index(name)
    for name in ("agent_id", "tool", "server", "session_id", "args_json", "token", "args_labels",
                 "result_labels", "args_fingerprints", "result_fingerprints", "destinations", "source")
)  # fmt: skip
"""Columns whose values the daemon makes one object across requests (``Canon``): the keys of the
detectors' dicts, which compare an identical key without reading its characters."""
_LASTING = frozenset(
    _CALL_COLUMNS.index(name)
    for name in ("agent_id", "tool", "server", "token", "args_labels", "result_labels", "destinations", "source")
)  # fmt: skip
"""Of those, the columns of few values that the detectors keep for the daemon's lifetime (agents,
tools, servers, labels, destinations): ``Canon`` keeps them apart from the ones that keep coming
(sessions, arguments, fingerprints), so dropping those does not drop these."""

# What the worker tries on a column, decided once per column from ToolCall's field types rather
# than per request: equal str are also of one type (unlike ints and floats: ``1 == 1.0 == True``,
# ``0.0 == -0.0``), so str and tuple-of-str columns are the only ones whose equal values go as one.
_TEXT, _TEXTS, _INT, _OTHER, _UNIQUE = range(5)
_PLAN = tuple(
    _UNIQUE if name == "span_id"  # one per span: looking for repeats only costs (about 0.1 µs a call)
    else {"str": _TEXT, "tuple[str, ...]": _TEXTS, "int": _INT}.get(_TYPE[name], _OTHER)
    for name in _CALL_COLUMNS
)  # fmt: skip
_SERVER, _TOOL, _TOKEN = _CALL_COLUMNS.index("server"), _CALL_COLUMNS.index("tool"), _CALL_COLUMNS.index("token")
_TEXTS_PLANS = frozenset(i for i, plan in enumerate(_PLAN) if plan == _TEXTS)
_TABLE_COLUMNS = tuple(sorted(_CANONICAL, key=lambda i: (i not in _LASTING, i)))
"""The columns ``ValueTable`` sends as slots, in the order that fixes the order of new slots: the
``_LASTING`` columns first, then the others, each group in column order. A frame's new values then
start with the lasting ones, which the mirror keeps in ``Canon``'s lasting table (``TableMirror.define``)."""
_STR_TYPE, _TUPLE_TYPE, _INT_TYPE = {str}, {tuple}, {int}


def _texts_only(values: tuple[Any, ...], tuples: bool) -> bool:
    """Whether ``values`` are all str (``tuples``: all tuples of str), with C loops (no generator)."""
    if tuples:
        return {*map(type, values)} == _TUPLE_TYPE and {*map(type, chain.from_iterable(values))} <= _STR_TYPE
    return {*map(type, values)} == _STR_TYPE


def _distinct(col: tuple[Any, ...]) -> tuple[dict[Any, int], list[int]] | None:
    """{value: its index} in order of first appearance and each call's index, in one pass in C.

    ``map`` asks ``len(where)`` before each ``setdefault``: a new value gets the next index, a seen
    one keeps its own. None for unhashable values (only a type-violating column has them).
    """
    where: dict[Any, int] = {}
    try:
        return where, list(map(where.setdefault, col, map(len, repeat(where))))
    except TypeError:
        return None


def _column(col: tuple[Any, ...], i: int) -> tuple[Any, ...]:
    first = col[0]
    if all(map(is_, col, repeat(first))):
        return (SAME, first)
    plan = _PLAN[i]
    if plan == _TEXT or plan == _TEXTS:
        # Columns the daemon keeps one object per value of (``Canon``) go indexed even without
        # repeats; the others only with repeats, which a set (no indexes) tells for less.
        found = _distinct(col) if i in _CANONICAL or _repeats(col) else None
        if found is not None:
            where, indexes = found
            if _texts_only(tuple(where), plan == _TEXTS):
                if len(where) == 1:
                    return (SAME, first)
                return (INDEXED, tuple(where), bytes(indexes) if len(where) <= 256 else tuple(indexes))
    elif plan == _INT and _INT64 and {*map(type, col)} == _INT_TYPE:
        try:
            return (INTS, array("q", col).tobytes())
        except OverflowError:
            pass  # an int past 64 bits: sent as it is
    return (PLAIN, col)


def _repeats(col: tuple[Any, ...]) -> bool:
    try:
        return len(set(col)) < len(col)
    except TypeError:
        return False  # unhashable: only a type-violating column has such values


def rows_to_columns(rows: list[tuple[Any, ...]]) -> tuple[int, tuple[tuple[Any, ...], ...]]:
    """(number of calls, one entry per column of ``_CALL_COLUMNS``): what the daemon rebuilds fastest.

    ``rows``: each call's fields in ``ToolCall`` order, as ``Normalizer(rows=True)`` gives them
    without building a ``ToolCall``; the token column is worked out here (``_token_column``).

    The daemon's interpreter is the bottleneck and the worker has CPU to spare (issue #4), so the
    worker finds what repeats: a column whose calls all hold one object is sent once (defaults,
    per-request constants such as ``source``); a text column with repeated values (and every
    ``_CANONICAL`` one) is sent as its distinct values and an index per call, so ``marshal.loads``
    allocates one object per distinct value instead of one per call; int columns go packed.
    ``span_id`` (one per span) is not searched for repeats. Values are unchanged, and so are their types.
    """
    if not rows:
        return (0, ())
    cols = tuple(zip(*rows))
    if len(cols) != _TOKEN:
        raise ValueError(f"rows of {len(cols)} values; a call has {_TOKEN} fields")
    entries = list(map(_column, cols, range(_TOKEN)))
    entries.append(_token_column(entries[_SERVER], entries[_TOOL], cols[_SERVER], cols[_TOOL]))
    return (len(rows), tuple(entries))


def _token_column(
    server: tuple[Any, ...], tool: tuple[Any, ...], servers: tuple[Any, ...], tools: tuple[Any, ...]
) -> tuple[Any, ...]:
    """The entry ``_column`` gives the calls' tokens, from the server and tool entries: one
    ``tool_token`` per distinct (server, tool) pair instead of one f-string per call.

    Distinct pairs come in order of first appearance and equal tokens of two pairs merge, so the
    values and indexes are those of the tokens column itself. Columns that are not all str (a
    type-violating call) take ``tool_token`` call by call, as ``ToolCall.__post_init__`` does.
    """
    n = len(servers)
    s_values, s_indexes = _text_index(server, n)
    t_values, t_indexes = _text_index(tool, n)
    if s_values is None or t_values is None:
        return _column(tuple(map(tool_token, servers, tools)), _TOKEN)
    if type(s_indexes) is bytes and type(t_indexes) is bytes:
        found = _tokens_by_tool(s_values, s_indexes, t_values, t_indexes)
        if found is not None:
            return found
    # A pair as one int (server index * tools + tool index): ints hash for less than tuples.
    width = len(t_values)
    pairs: dict[int, int] = {}
    keys = map(add, map(mul, s_indexes, repeat(width)), t_indexes)
    per_call = list(map(pairs.setdefault, keys, map(len, repeat(pairs))))
    tokens: dict[str, int] = {}
    of_pair = []  # the token index of each distinct pair, in the pairs' order
    for pair in pairs:
        s, t = s_values[pair // width], t_values[pair % width]
        of_pair.append(tokens.setdefault(tool_token(s, t), len(tokens)))
    if len(tokens) == 1:
        return (SAME, next(iter(tokens)))
    indexes = list(map(of_pair.__getitem__, per_call))
    return (INDEXED, tuple(tokens), bytes(indexes) if len(tokens) <= 256 else tuple(indexes))


def _tokens_by_tool(
    s_values: tuple[str, ...], s_indexes: bytes, t_values: tuple[str, ...], t_indexes: bytes
) -> tuple[Any, ...] | None:
    """``_token_column`` where each tool of the request has one server (the usual case), with
    ``bytes.translate`` for every per-call step; None where a tool has calls on two servers.

    A tool's index is that of its first call (``_distinct`` numbers values in order of first
    appearance), so the tokens, numbered in the tools' order, are in order of first appearance too.
    """
    server_of = bytearray(256)
    for t in range(len(t_values)):
        server_of[t] = s_indexes[t_indexes.index(t)]  # the server of the tool's first call
    if t_indexes.translate(server_of) != s_indexes:
        return None
    tokens: dict[str, int] = {}
    token_of = bytearray(256)
    for t, tool in enumerate(t_values):
        server = s_values[server_of[t]]
        token_of[t] = tokens.setdefault(tool_token(server, tool), len(tokens))
    if len(tokens) == 1:
        return (SAME, next(iter(tokens)))
    return (INDEXED, tuple(tokens), t_indexes.translate(token_of))


def _text_index(entry: tuple[Any, ...], n: int) -> tuple[tuple[str, ...], Any] | tuple[None, None]:
    """(values, an index per call) of a str column's entry (SAME or INDEXED), else (None, None)."""
    if entry[0] == INDEXED:
        return entry[1], entry[2]  # INDEXED text columns hold str only (``_texts_only``)
    if entry[0] == SAME and type(entry[1]) is str:
        return (entry[1],), bytes(n)
    return None, None


def calls_to_columns(calls: list[ToolCall]) -> tuple[int, tuple[tuple[Any, ...], ...]]:
    """``rows_to_columns`` of built calls, whose own tokens are sent."""
    if not calls:
        return (0, ())
    return (len(calls), tuple(map(_column, zip(*map(_call_columns, calls)), range(len(_CALL_COLUMNS)))))


class Canon:
    """One object per equal value across the requests of the daemon's workers (at most ``limit`` kept
    per table).

    Each frame unmarshals its own strings: without this, the same agent, tool or session of two
    requests are two objects, and every dict lookup the detectors make by them compares characters
    instead of identity (about 1 µs of detector CPU per call on the fleet workload). Dropping the
    whole table when it is full keeps it bounded (sessions keep coming) and costs no correctness.

    ``lasting`` values (``_LASTING`` columns: agents, tools, servers...) have a table of their own:
    sessions and fingerprints fill the other one every few hundred thousand calls, and had it taken
    the agents and tools with it, every key the detectors stored before (their per-agent state, the
    sequence models' tokens) would from then on be another object than the calls' own, for good
    (a dict keeps its first key object): lookups reading characters again, out of cache."""

    def __init__(self, limit: int = 1 << 16) -> None:
        self.limit = limit
        self._objects: dict[Any, Any] = {}
        self._lasting: dict[Any, Any] = {}

    def __call__(self, values: tuple[Any, ...], lasting: bool = False) -> tuple[Any, ...]:
        objects = self._lasting if lasting else self._objects
        if len(objects) > self.limit:
            objects.clear()
        return tuple(map(objects.setdefault, values, values))


def _unpack(entry: tuple[Any, ...], i: int, n: int, canon: Canon | None, table: list[Any] | None = None) -> Any:
    kind = entry[0]
    if kind == TABLED and table is not None:
        (_, slots, indexes) = entry
        values = tuple(map(table.__getitem__, array("H", slots)))  # canonical when they were defined
        if len(indexes) == 1:
            return (values[indexes[0]],)
        return itemgetter(*indexes)(values)
    if kind == SAME:
        (_, value) = entry
        if canon is not None and i in _CANONICAL and _texts_only((value,), i in _TEXTS_PLANS):
            (value,) = canon((value,), i in _LASTING)
        return repeat(value, n)
    if kind == INDEXED:
        (_, values, indexes) = entry
        if canon is not None and i in _CANONICAL:
            values = canon(values, i in _LASTING)
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
    encoded: tuple[Any, ...], canon: Canon | None = None, mirror: TableMirror | None = None
) -> list[ToolCall]:
    """The calls of ``calls_to_columns``, equal to the worker's and with the same ``token``.

    ``mirror``: the connection's ``TableMirror``, for calls encoded with its worker's ``ValueTable``.
    Raises ``ValueError`` (or ``IndexError``) for columns that do not fit together, ``OutOfStep``
    for table slots the mirror does not follow.
    """
    table = None
    if len(encoded) == 3:  # (n, entries, definitions): see ValueTable.encode
        if mirror is None:
            raise ValueError("a frame's calls use a value table, and this connection keeps none")
        n, entries, definitions = encoded
        table = mirror.define(definitions, canon)
    else:
        n, entries = encoded
    if not n:
        return []
    if len(entries) != len(_CALL_COLUMNS):
        raise ValueError(f"a frame's calls have {len(entries)} columns; this daemon expects {len(_CALL_COLUMNS)}")
    return _build(n, [_unpack(entry, i, n, canon, table) for i, entry in enumerate(entries)])


_TABLE_SLOTS = 1 << 16
"""Most values of a value table: its slots travel as 16 bits."""


class OutOfStep(ValueError):
    """A frame's value-table slots do not follow the daemon's mirror of them: the worker is broken."""


class ValueTable:
    """The worker's side of a connection's value table: each value of a ``_CANONICAL`` column it has
    sent, by slot (at most ``limit``, then it starts over).

    Most of a request's agents, sessions, tools, arguments and fingerprints were in earlier requests.
    Sent as values, the daemon unmarshalled each again and looked it up in its ``Canon`` (hashing
    a fresh string, in a table the detectors keep out of the cache), only to drop it for the object
    it already had: about half a µs of its interpreter per call (issue #4). Here each distinct
    value goes once per connection, and after that as a 2-byte slot of the daemon's ``TableMirror``,
    which holds the canonical objects themselves.
    """

    def __init__(self, limit: int = _TABLE_SLOTS) -> None:
        if not 0 < limit <= _TABLE_SLOTS:
            raise ValueError("a value table holds at most 65536 values (slots travel as 16 bits)")
        self.limit = limit
        self.generation = 0
        self._slots: dict[Any, int] = {}

    def encode(self, calls: tuple[int, tuple[tuple[Any, ...], ...]]) -> tuple[Any, ...]:
        """``calls`` (of ``rows_to_columns``/``calls_to_columns``) with their ``_CANONICAL`` INDEXED
        entries as TABLED, and the table's new values: (n, entries, (generation, base, new values,
        how many of them, the first, are of ``_LASTING`` columns)).

        Values are keys of one dict across columns, as in ``Canon`` (only str and tuples of str
        are INDEXED, so equal values are of one type). A frame that would take the table past its
        limit starts a new generation, which the mirror starts over with. Call ``forget`` when the
        frame is not sent after all: the daemon must see every definition, in order.
        """
        n, entries = calls
        tabled = [i for i in _TABLE_COLUMNS if entries[i][0] == INDEXED] if n else []
        if not tabled:
            return calls
        slots = self._slots
        need = sum(len(entries[i][1]) for i in tabled)
        if need > self.limit:
            return calls  # more distinct values than any table holds: sent as values
        if len(slots) + need > self.limit:
            slots.clear()
            self.generation += 1
        base = len(slots)
        out = list(entries)
        new: list[Any] = []
        lasting = 0  # how many of ``new`` (the first) are values of ``_LASTING`` columns
        for i in tabled:
            (_, values, indexes) = entries[i]
            start = len(slots)  # not ``base``: a value new in an earlier column of the frame is slotted there
            ids = list(map(slots.setdefault, values, map(len, repeat(slots))))
            new += compress(values, map(le, repeat(start), ids))  # the values slotted just now, in slot order
            out[i] = (TABLED, array("H", ids).tobytes(), indexes)
            if i in _LASTING:
                lasting = len(new)
        return (n, tuple(out), (self.generation, base, tuple(new), lasting))

    def forget(self) -> None:
        """Start over (a new generation): the last ``encode`` was not sent, so the mirror lacks its values."""
        self._slots.clear()
        self.generation += 1


class TableMirror:
    """The daemon's side of a connection's ``ValueTable``: the canonical object of each slot."""

    def __init__(self) -> None:
        self.generation = 0
        self.values: list[Any] = []

    def define(self, definitions: tuple[Any, ...], canon: Canon | None) -> list[Any]:
        """Take a frame's new values (after ``canon``, which makes them one object with equal values
        of other connections and of untabled columns); the table its TABLED entries index."""
        generation, base, new, lasting = definitions
        if generation != self.generation:
            self.generation, self.values = generation, []
        if (base != len(self.values) or type(new) is not tuple or base + len(new) > _TABLE_SLOTS
                or type(lasting) is not int or not 0 <= lasting <= len(new)):
            raise OutOfStep(
                f"a frame defines value-table slots from {base!r} on ({lasting!r} lasting); this connection has "
                f"{len(self.values)}"
            )
        if canon is None:
            self.values += new
        else:  # agents, tools... in Canon's lasting table, as when they come as values (``_unpack``)
            self.values += canon(new[:lasting], True) if lasting else ()
            self.values += canon(new[lasting:])
        return self.values


def _build(n: int, cols: list[Any], new: Any = object.__new__, cls: type[ToolCall] = ToolCall) -> list[ToolCall]:
    """``ToolCall(*row[:-1])`` with the token ``row[-1]`` for each row of ``cols``, without ``__init__``
    and ``__post_init__``; ``ValueError`` when a column has other than ``n`` values.

    Setting the slots here costs the daemon less than the generated ``__init__`` (25 arguments) and
    ``__post_init__`` (a frame and an f-string per call). The ``n`` objects are made at once in C, and
    the loop's target takes each row straight into the slots of its call (``call`` is the row's
    first item, bound before the slots are set) with an empty body: no call, no append, and ``zip``
    reuses its row tuple (27 items: past the tuple free list) instead of allocating one per call.
    The names are checked against ``_CALL_COLUMNS`` when this module is imported.
    """
    out: list[ToolCall] = list(map(new, repeat(cls, n)))
    for (
        call, call.time_ns, call.agent_id, call.tool, call.server, call.session_id, call.duration_ns, call.trace_id,
        call.span_id, call.request_id, call.agent_name, call.server_address, call.error_type, call.args_json,
        call.args_bytes, call.result_bytes, call.args_labels, call.result_labels, call.args_fingerprints,
        call.result_fingerprints, call.args_sketch, call.result_sketch, call.result_injection_score,
        call.destinations, call.definition_sha256, call.source, call.token,
    ) in zip(out, *cols, strict=True):  # fmt: skip
        pass
    return out


_SLOTS = {name for klass in ToolCall.__mro__ for name in getattr(klass, "__slots__", ())}
_SET = tuple(name for name in _build.__code__.co_names if name in _SLOTS)
if _SET != _CALL_COLUMNS or _SLOTS != set(_CALL_COLUMNS):
    raise ImportError(
        "ToolCall's fields or slots changed: update worker_frames._build, which sets every slot itself "
        f"(expected the columns {_CALL_COLUMNS}, ToolCall has the slots {sorted(_SLOTS)})"
    )
del _SET


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
    request_id: int, receiver: str, norm: Normalized, decode_rejected: int, decode_errors: tuple[str, ...],
    *, rows: bool = False, table: ValueTable | None = None,
) -> bytes:
    """The INGEST frame of ``norm``; ``rows``: its calls are rows (``Normalizer(rows=True)``), not ``ToolCall``s.

    ``table``: the connection's ``ValueTable`` (the daemon reads the frame with its ``TableMirror``);
    the frame must then be sent, and in the order built."""
    msg = ingest_message(request_id, receiver, norm, decode_rejected, decode_errors, rows=rows, table=table)
    try:
        return frame(msg)
    except BaseException:
        if table is not None:
            table.forget()
        raise


def ingest_message(
    request_id: int, receiver: str, norm: Normalized, decode_rejected: int, decode_errors: tuple[str, ...],
    *, rows: bool = False, table: ValueTable | None = None,
) -> tuple[Any, ...]:
    """``ingest_frame``'s message, not yet framed (several travel in one frame: decode_worker_main)."""
    calls: tuple[Any, ...] = rows_to_columns(norm.calls) if rows else calls_to_columns(norm.calls)  # type: ignore[arg-type]
    try:
        if table is not None:
            calls = table.encode(calls)  # type: ignore[arg-type]
        return (
            INGEST, request_id, receiver, calls, listings_to_tuples(norm.listings),
            norm.spans, norm.rejected, tuple(norm.errors), decode_rejected, tuple(decode_errors),
        )  # fmt: skip
    except BaseException:
        if table is not None:
            table.forget()
        raise


def read_ingest(
    msg: tuple[Any, ...], canon: Canon | None = None, mirror: TableMirror | None = None
) -> tuple[int, str, Normalized, int, tuple[str, ...]]:
    """(request id, receiver, the worker's ``Normalized``, decode_rejected, decode_errors) of an INGEST.

    ``canon``: the daemon's ``Canon`` (one object per equal agent, tool, session... across requests);
    ``mirror``: the connection's ``TableMirror`` (frames built with a ``ValueTable``).
    """
    _, request_id, receiver, calls, listings, spans, rejected, errors, decode_rejected, decode_errors = msg
    norm = Normalized(columns_to_calls(calls, canon, mirror), tuples_to_listings(listings), spans, rejected, list(errors))
    return request_id, receiver, norm, decode_rejected, tuple(decode_errors)
