"""A lean keep-alive HTTP/1.1 client for the HTTP proxy's upstream leg (the per-request hot path).

``aiohttp.ClientSession.request`` spends a few hundred microseconds of CPU per request on request
and response objects, multidicts, timers and a writer task; the proxy only has to send bytes it
already holds and stream back status, headers and body chunks as they arrive. This client does
exactly that over pooled connections: bodies pass through undecoded (compression untouched),
chunked framing is removed (the proxy's own response re-frames). Failures raise aiohttp's
exception types, so the proxy treats both clients alike.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

_NO_BODY_STATUS = frozenset({204, 304})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_PAUSE_BYTES = 1 << 20
"""Stop reading the upstream while this much body waits for a slow client."""


class _Stale(Exception):
    """A pooled connection was closed by the upstream before it answered: retry on a new one."""


class _Connection(asyncio.Protocol):
    """One upstream connection: parses one response at a time, queues its body chunks."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reusable = False
        self.reused = False
        self._buf = bytearray()
        self._head: asyncio.Future[tuple[int, str, CIMultiDict[str]]] | None = None
        self._method = "GET"
        self._state = "idle"  # idle | head | body | done
        self._framing = "close"  # length | chunked | close | none
        self._remaining = 0
        self._chunk_left = -1  # chunked: -1 = expecting a size line, -2 = trailers, else data bytes left
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._closed = False

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._state == "body":
            self._body(data)
        elif self._state == "head":
            self._buf += data
            self._parse_head()
        else:  # bytes nobody asked for: this connection cannot be trusted again
            self.reusable = False
            self._close()

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost finishes the response

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.reusable = False
        if self._state == "head" and self._head is not None and not self._head.done():
            if self.reused and not self._buf:
                self._head.set_exception(_Stale())
            else:
                self._head.set_exception(aiohttp.ServerDisconnectedError())
        elif self._state == "body":
            if self._framing == "close":
                self._finish()
            else:
                self._fail(aiohttp.ClientPayloadError(
                    f"the upstream closed the connection mid-response{f': {exc}' if exc else ''}"))
        self._wake()

    # -- request ---------------------------------------------------------------------------------
    def start(self, method: str, head: bytes, body: bytes) -> asyncio.Future[tuple[int, str, CIMultiDict[str]]]:
        assert self.transport is not None
        self._method = method
        self._state = "head"
        self._buf.clear()
        self._chunks.clear()
        self._buffered = 0
        self._error = None
        self._chunk_left = -1
        self._head = asyncio.get_running_loop().create_future()
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        return self._head

    # -- response parsing ------------------------------------------------------------------------
    def _parse_head(self) -> None:
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > 256 * 1024:
                    self._fail_head(aiohttp.ClientError("upstream response headers larger than 256 KiB"))
                return
            lines = bytes(self._buf[:end]).decode("utf-8", "surrogateescape").split("\r\n")
            rest = bytes(self._buf[end + 4:])
            self._buf.clear()
            parts = lines[0].split(" ", 2)
            try:
                if not parts[0].startswith("HTTP/1."):
                    raise ValueError(lines[0])
                status = int(parts[1])
            except (ValueError, IndexError):
                self._fail_head(aiohttp.ClientError(f"invalid upstream status line {lines[0][:80]!r}"))
                return
            if 100 <= status < 200 and status != 101:
                self._buf += rest  # an interim response (100 Continue): the real one follows
                continue
            headers: CIMultiDict[str] = CIMultiDict()
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers.add(name.strip(), value.strip())
            self._frame(status, headers, parts[0] == "HTTP/1.0")
            assert self._head is not None
            self._head.set_result((status, parts[2] if len(parts) > 2 else "", headers))
            if rest:
                self._body(rest)
            return

    def _frame(self, status: int, headers: CIMultiDict[str], http10: bool) -> None:
        connection = headers.get("Connection", "").lower()
        self.reusable = not http10 and "close" not in connection
        self._state = "body"
        if self._method == "HEAD" or status in _NO_BODY_STATUS:
            self._framing = "none"
            self._finish()
        elif "chunked" in headers.get("Transfer-Encoding", "").lower():
            self._framing = "chunked"
        elif headers.get("Content-Length", "").strip().isdigit():
            self._framing = "length"
            self._remaining = int(headers["Content-Length"])
            if self._remaining == 0:
                self._finish()
        else:
            self._framing = "close"
            self.reusable = False

    def _body(self, data: bytes) -> None:
        if self._framing == "chunked":
            self._dechunk(data)
        elif self._framing == "length":
            if len(data) > self._remaining:
                data = data[: self._remaining]
                self.reusable = False  # more bytes than announced: do not trust the rest
            self._remaining -= len(data)
            self._push(data)
            if self._remaining == 0:
                self._finish()
        elif self._framing == "close":
            self._push(data)
        else:
            self.reusable = False

    def _dechunk(self, data: bytes) -> None:
        """Strip chunked framing; data chunks are pushed as they arrive (an SSE event need not wait)."""
        buf = self._buf
        if buf:  # a size line or CRLF split across reads
            buf += data
            data = bytes(buf)
            buf.clear()
        pos, n = 0, len(data)
        while pos < n and self._state == "body":
            left = self._chunk_left
            if left > 0:
                take = min(left, n - pos)
                self._push(data[pos:pos + take])
                pos += take
                self._chunk_left = left - take if left > take else -3  # -3: the CRLF after the data
                continue
            end = data.find(b"\r\n", pos)
            if end < 0:
                if n - pos > 64 * 1024:
                    self._fail(aiohttp.ClientPayloadError("invalid chunked encoding from the upstream"))
                else:
                    buf += data[pos:]
                return
            line = data[pos:end]
            pos = end + 2
            if left == -3:
                if line:
                    self._fail(aiohttp.ClientPayloadError("invalid chunked encoding from the upstream"))
                    return
                self._chunk_left = -1
            elif left == -1:  # a size line
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    self._fail(aiohttp.ClientPayloadError("invalid chunked encoding from the upstream"))
                    return
                self._chunk_left = size if size > 0 else -2  # -2: trailers until an empty line
            elif not line:
                if pos < n:
                    self.reusable = False  # bytes after the response: do not trust the connection
                self._finish()

    def _push(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _PAUSE_BYTES and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self._state = "done"
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._state = "done"
        self.reusable = False
        self._close()
        self._wake()

    def _fail_head(self, exc: BaseException) -> None:
        self.reusable = False
        self._state = "done"
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
        self._close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _close(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.close()

    # -- consumer --------------------------------------------------------------------------------
    async def iter_any(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (all that is queued at once); raises if the upstream broke off."""
        while True:
            if self._chunks:
                data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                self._chunks.clear()
                self._buffered = 0
                if self._paused and self.transport is not None and not self._closed:
                    self._paused = False
                    self.transport.resume_reading()
                yield data
                continue
            if self._error is not None:
                raise self._error
            if self._state == "done" or self._closed:
                return
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    @property
    def complete(self) -> bool:
        return self._state == "done" and self._error is None and not self._chunks


class UpstreamResponse:
    """Status, headers and a streamed body; ``async with`` returns the connection to the pool."""

    def __init__(self, pool: UpstreamPool, conn: _Connection, status: int, reason: str,
                 headers: CIMultiDict[str]) -> None:
        self._pool, self._conn = pool, conn
        self.status, self.reason = status, reason
        self.headers = CIMultiDictProxy(headers)
        length = headers.get("Content-Length", "").strip()
        self.content_length = int(length) if length.isdigit() and conn._framing == "length" else None
        self.content = conn
        """``content.iter_any()`` streams the body, as ``aiohttp.ClientResponse.content`` does."""

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self._conn.iter_any()])

    def release(self) -> None:
        self._pool._give_back(self._conn)

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.release()


class UpstreamPool:
    """Keep-alive connections to one upstream origin; one request per connection at a time."""

    def __init__(self, scheme: str, host: str, port: int, *, connect_timeout: float = 10.0,
                 max_idle: int = 32) -> None:
        self._host, self._port = host, port
        self._ssl: ssl_module.SSLContext | None = ssl_module.create_default_context() if scheme == "https" else None
        default = 443 if scheme == "https" else 80
        host_text = f"[{host}]" if ":" in host else host
        self._host_header = host_text if port == default else f"{host_text}:{port}"
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._idle: list[_Connection] = []
        self._closed = False

    async def request(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> UpstreamResponse:
        """Send one request; return once the response headers are in."""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host_header}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if body or method in _BODY_METHODS:
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
        while True:
            conn = self._take_idle()
            if conn is None:
                conn = await self._connect()
            try:
                status, reason, response_headers = await conn.start(method, head, body)
            except _Stale:
                continue  # the upstream had closed this idle connection; a fresh one is tried next
            except BaseException:
                conn.reusable = False
                conn._close()
                raise
            return UpstreamResponse(self, conn, status, reason, response_headers)

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn._closed:
                conn.reused = True
                return conn
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(
                _Connection, self._host, self._port, ssl=self._ssl,
                server_hostname=self._host if self._ssl is not None else None,
            ), self._connect_timeout)
        except asyncio.TimeoutError as exc:
            raise aiohttp.ServerTimeoutError(
                f"connecting to {self._host}:{self._port} took longer than {self._connect_timeout:g} s") from exc
        except OSError as exc:
            raise aiohttp.ClientConnectorError(_Key(self._host, self._port, self._ssl is not None), exc) from exc
        return conn

    def _give_back(self, conn: _Connection) -> None:
        if self._closed or not conn.reusable or not conn.complete or conn._closed or len(self._idle) >= self._max_idle:
            conn.reusable = False
            conn._close()
            return
        conn._state = "idle"
        self._idle.append(conn)

    async def close(self) -> None:
        """Close idle connections; connections still streaming close when their response ends."""
        self._closed = True
        for conn in self._idle:
            conn._close()
        self._idle.clear()


class _Key:
    """What ``aiohttp.ClientConnectorError`` reads from its connection key."""

    def __init__(self, host: str, port: int, is_ssl: bool) -> None:
        self.host, self.port, self.ssl = host, port, is_ssl
