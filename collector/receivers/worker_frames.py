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
from dataclasses import fields
from operator import attrgetter
from typing import Any

from toolwatch.detectors.events import ToolCall, ToolDefinition, ToolListing

from ..normalize import Normalized

__all__ = [
    "CONFIG", "INGEST", "READY", "REJECTED", "STOP", "REPLY", "OK", "OVERLOADED", "UNAVAILABLE",
    "HEADER", "frame", "unframe", "calls_to_tuples", "tuples_to_calls", "listings_to_tuples",
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
_call_values = attrgetter(*_CALL_FIELDS)
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


_SHARED = tuple(_CALL_FIELDS.index(name) for name in ("agent_id", "tool", "server", "session_id", "args_json"))
"""Fields whose non-empty values repeat across a request's calls. Strings only: equal strings are
also of one type (unlike ints and floats, ``1 == 1.0``). Sharing more fields (labels, request ids,
the mostly empty ones) saved the daemon little more and cost the worker more."""


def calls_to_tuples(calls: list[ToolCall]) -> list[tuple[Any, ...]]:
    """Each call's fields in declaration order (``ToolCall(*t)`` rebuilds it).

    Equal agents, tools, servers, sessions and arguments of a request are made one object each:
    ``marshal`` then writes each once and back-references the rest, so the daemon's
    ``marshal.loads`` (its own CPU, which the detectors need) allocates one string per distinct
    value instead of one per call. The worker pays for that (about 0.5 µs a call); the values are
    unchanged.
    """
    rows = list(map(_call_values, calls))
    if len(rows) < 2:
        return rows
    cols: list[Any] = list(zip(*rows))
    one = {}.setdefault
    for i in _SHARED:
        col = cols[i]
        cols[i] = map(one, col, col)
    return list(zip(*cols))


def tuples_to_calls(rows: list[tuple[Any, ...]]) -> list[ToolCall]:
    return [ToolCall(*row) for row in rows]


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
        INGEST, request_id, receiver, calls_to_tuples(norm.calls), listings_to_tuples(norm.listings),
        norm.spans, norm.rejected, tuple(norm.errors), decode_rejected, tuple(decode_errors),
    ))  # fmt: skip


def read_ingest(msg: tuple[Any, ...]) -> tuple[int, str, Normalized, int, tuple[str, ...]]:
    """(request id, receiver, the worker's ``Normalized``, decode_rejected, decode_errors) of an INGEST."""
    _, request_id, receiver, calls, listings, spans, rejected, errors, decode_rejected, decode_errors = msg
    norm = Normalized(tuples_to_calls(calls), tuples_to_listings(listings), spans, rejected, list(errors))
    return request_id, receiver, norm, decode_rejected, tuple(decode_errors)
