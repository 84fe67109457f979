"""Line-framed pumps for the enforcing stdio proxy.

Why not the byte pumps of ``stdio.py``: enforcement must see a whole message before deciding,
and the proxy's own answers (refusals, ``list_changed``) must never land in the middle of a
line the server is still writing. Each direction therefore goes through a ``LineWriter`` that
writes whole lines under a lock; a line longer than ``max_bytes`` streams through unparsed while
the lock is held (a client ``tools/call`` that large is refused instead: it cannot be checked).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from .enforce import Enforcer, refusal
from .decisions import Verdict

CHUNK = 64 * 1024
_ID_IN_HEAD = re.compile(rb'"id"\s*:\s*(-?\d+|"(?:[^"\\]|\\.)*")')


class LineWriter:
    """Whole-line writes to one stream, serialized; oversized lines stream under the same lock."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.lock = asyncio.Lock()

    async def line(self, data: bytes) -> None:
        async with self.lock:
            await self._write(data + b"\n")

    async def _write(self, data: bytes) -> None:
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size() > 4 * CHUNK:
            await self.writer.drain()


async def pump_client(reader: asyncio.StreamReader, server: LineWriter, client: LineWriter,
                      enforcer: Enforcer, max_bytes: int) -> str:
    """Client to server: every complete line goes through the enforcer."""

    async def to_server(data: bytes) -> None:
        await server.line(data)

    async def to_client(data: bytes) -> None:
        await client.line(data)

    buf = bytearray()
    skipping: bytes | None = None  # head of an oversized line being discarded
    while True:
        chunk = await reader.read(CHUNK)
        if not chunk:
            return "eof"
        try:
            start = 0
            while True:
                end = chunk.find(b"\n", start)
                piece = chunk[start:] if end < 0 else chunk[start:end]
                if skipping is not None:
                    if end >= 0:
                        await _refuse_oversized(skipping, to_client)
                        skipping = None
                elif len(buf) + len(piece) > max_bytes:
                    skipping = bytes((buf + piece)[:4096])
                    buf.clear()
                    if end >= 0:
                        await _refuse_oversized(skipping, to_client)
                        skipping = None
                else:
                    buf += piece
                    if end >= 0:
                        line = bytes(buf).rstrip(b"\r")
                        buf.clear()
                        if line.strip():
                            await enforcer.from_client(line, to_server, to_client)
                if end < 0:
                    break
                start = end + 1
        except (BrokenPipeError, ConnectionResetError):
            return "peer_closed"


async def _refuse_oversized(head: bytes, to_client: Any) -> None:
    """A client message too large to check: refused when it has an id, dropped otherwise (never forwarded)."""
    match = _ID_IN_HEAD.search(head)
    if match is None:
        return
    try:
        request_id = json.loads(match.group(1))
    except ValueError:
        return
    await to_client(refusal(request_id, "", Verdict(
        "deny", "the message is larger than --max-message-bytes and cannot be checked", "max_message_bytes", "proxy")))


async def pump_server(reader: asyncio.StreamReader, client: LineWriter, enforcer: Enforcer, max_bytes: int) -> str:
    """Server to client: whole lines (``tools/list`` results filtered); oversized lines stream unparsed."""
    buf = bytearray()
    streaming = False
    try:
        while True:
            chunk = await reader.read(CHUNK)
            if not chunk:
                if streaming:
                    client.lock.release()
                return "eof"
            start = 0
            while True:
                end = chunk.find(b"\n", start)
                piece = chunk[start:] if end < 0 else chunk[start:end + 1]
                if streaming:
                    await client._write(piece)
                    if end >= 0:
                        streaming = False
                        client.lock.release()
                elif len(buf) + len(piece) > max_bytes:
                    await client.lock.acquire()
                    streaming = True
                    await client._write(bytes(buf) + piece)
                    buf.clear()
                    if end >= 0:
                        streaming = False
                        client.lock.release()
                else:
                    buf += piece
                    if end >= 0:
                        line = bytes(buf[:-1])
                        buf.clear()
                        out = await enforcer.from_server(line) if line.strip() else line
                        await client.line(out)
                        if line.strip():
                            enforcer.recorder.submit(enforcer.tracker, "s2c", line, enforcer.now_ns())
                if end < 0:
                    break
                start = end + 1
    except (BrokenPipeError, ConnectionResetError):
        if streaming:
            client.lock.release()
        return "peer_closed"
