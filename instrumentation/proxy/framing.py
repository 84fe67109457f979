"""Byte framing for the proxy: newline-delimited JSON-RPC (stdio) and SSE ``data:`` events (HTTP).

Both splitters hold at most ``max_bytes`` of one message; a longer message is still forwarded by
the caller (bytes pass through untouched) but reaches the observer only as an ``Oversized``
record: its first bytes and its total size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

HEAD_BYTES = 4096
"""How much of an oversized message is kept to find its JSON-RPC id."""


@dataclass(slots=True, frozen=True)
class Oversized:
    """A message larger than the observation limit: its first bytes and its full size."""

    head: bytes
    size: int


class LineSplitter:
    """Split a byte stream into lines (without the newline), bounded by ``max_bytes`` per line."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._head = b""
        self._size = 0
        self._oversized = False

    @property
    def partial(self) -> bool:
        """True when bytes of an unfinished line have been seen."""
        return bool(self._buf) or self._oversized

    def feed(self, chunk: bytes) -> Iterator[bytes | Oversized]:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            self._take(piece)
            if end < 0:
                return
            done = self._finish()
            if done is not None:
                yield done
            start = end + 1

    def _take(self, piece: bytes) -> None:
        if not piece:
            return
        if self._oversized:
            self._size += len(piece)
            if len(self._head) < HEAD_BYTES:
                self._head += piece[: HEAD_BYTES - len(self._head)]
            return
        self._buf += piece
        if len(self._buf) > self.max_bytes:
            self._oversized = True
            self._head = bytes(self._buf[:HEAD_BYTES])
            self._size = len(self._buf)
            self._buf.clear()

    def _finish(self) -> bytes | Oversized | None:
        if self._oversized:
            out: bytes | Oversized = Oversized(self._head, self._size)
            self._oversized, self._head, self._size = False, b"", 0
            return out
        line = bytes(self._buf)
        self._buf.clear()
        line = line.rstrip(b"\r")
        return line if line.strip() else None


class SseSplitter:
    """Extract the ``data`` of each server-sent event from a byte stream (WHATWG framing)."""

    def __init__(self, max_bytes: int) -> None:
        self._lines = LineSplitter(max_bytes)
        self._data: list[bytes] = []
        self._size = 0
        self._oversized: Oversized | None = None
        self.max_bytes = max_bytes

    def feed(self, chunk: bytes) -> Iterator[bytes | Oversized]:
        # An empty line ends an event; LineSplitter drops empty lines, so watch for b"\n\n".
        for line in self._split(chunk):
            if line is None:
                event = self._dispatch()
                if event is not None:
                    yield event
                continue
            if isinstance(line, Oversized):
                self._oversized = Oversized(line.head.partition(b":")[2].lstrip(b" "), line.size)
                continue
            field_name, _, value = line.partition(b":")
            if field_name == b"data":
                value = value[1:] if value.startswith(b" ") else value
                self._size += len(value) + 1
                if self._size > self.max_bytes:
                    if self._oversized is None:
                        self._oversized = Oversized(b"\n".join(self._data)[:4096], self._size)
                    self._data.clear()
                elif self._oversized is None:
                    self._data.append(value)
                else:
                    self._oversized = Oversized(self._oversized.head, self._size)

    def _split(self, chunk: bytes) -> Iterator[bytes | Oversized | None]:
        """Lines of the chunk, with ``None`` for each blank line (an event boundary)."""
        splitter = self._lines
        start = 0
        normalized = chunk.replace(b"\r\n", b"\n")
        while True:
            end = normalized.find(b"\n", start)
            if end < 0:
                splitter._take(normalized[start:])
                return
            piece = normalized[start:end]
            was_partial = splitter.partial
            splitter._take(piece)
            if not piece and not was_partial:
                yield None
            else:
                done = splitter._finish()
                yield done if done is not None else None
            start = end + 1

    def _dispatch(self) -> bytes | Oversized | None:
        if self._oversized is not None:
            out: bytes | Oversized | None = self._oversized
        elif self._data:
            out = b"\n".join(self._data)
        else:
            out = None
        self._data.clear()
        self._size = 0
        self._oversized = None
        return out
