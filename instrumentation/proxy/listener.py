"""The HTTP proxy's listening side: a small HTTP/1.1 server on ``asyncio.Protocol`` + ``httptools``.

Why not aiohttp's server: per proxied call it spent about as much CPU as everything else the
proxy does (request objects, multidicts, URL parsing, access-log and timer machinery, a task
and a payload stream per request). The proxy needs far less: one whole request body (bounded),
then a response that is either whole or streamed chunk by chunk (SSE). ``httptools`` (the
parser uvicorn uses) does the parsing in C; this module keeps connections, framing and the
timeouts that stop slow or idle clients from pinning a connection:

* ``keepalive_timeout`` (75 s, as aiohttp): an idle keep-alive connection is closed.
* ``header_timeout`` (30 s): a request's head must arrive within it once its first byte did,
  and its body may not pause longer than that between reads; otherwise 408 and close.

Requests on one connection are answered in order (pipelined ones wait their turn). The
``Request``/``StreamResponse``/``Response`` classes mirror the small part of aiohttp's web API
that ``http.py`` uses, so the proxy's forwarding code reads the same as before.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, TypeVar

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["Listener", "Request", "Response", "StreamResponse", "json_response"]

Handler = Callable[["Request"], Awaitable["StreamResponse"]]
T = TypeVar("T")

MAX_URL = 8190
"""Longest request target accepted (aiohttp's ``max_line_size``); longer ones get 414."""
MAX_FIELD = 65536
"""Longest single header field (the proxy's aiohttp setting); longer ones get 431."""
MAX_HEAD = 256 * 1024
"""All header fields of one request together; more gets 431."""
_MAX_QUEUED = 8
"""Pipelined requests parsed ahead of the one being answered; reading pauses beyond this."""
_NO_BODY = frozenset({204, 304})
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_DATE: list[Any] = [0, ""]


def _date() -> str:
    """The ``Date`` header value, formatted at most once a second."""
    now = int(time.time())
    if _DATE[0] != now:
        _DATE[0], _DATE[1] = now, formatdate(now, usegmt=True)
    return _DATE[1]


class _Reject(Exception):
    """A request the listener answers itself (status, message) and then closes the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Request:
    """One fully received request: method, target, headers and body (``b""`` when oversized)."""

    __slots__ = ("method", "raw_path", "headers", "body", "oversized", "version", "keep_alive", "_conn", "_url",
                 "_started")

    def __init__(self, conn: _Connection, method: str, raw_path: str, headers: CIMultiDictProxy[str], body: bytes,
                 oversized: bool, version: str, keep_alive: bool) -> None:
        self._conn = conn
        self.method, self.raw_path, self.headers, self.body = method, raw_path, headers, body
        self.oversized = oversized
        """The body was larger than the listener's ``max_body``; it was read and dropped."""
        self.version, self.keep_alive = version, keep_alive
        self._url: Any = None
        self._started = False
        """A response head went out (a later failure can only close the connection)."""

    def _parsed(self) -> Any:
        if self._url is None:
            from yarl import URL  # only the enforcement path needs decoded URL parts
            self._url = URL(self.raw_path, encoded=True)
        return self._url

    @property
    def path(self) -> str:
        """The decoded path (as aiohttp's ``Request.path``)."""
        return self._parsed().path

    @property
    def query_string(self) -> str:
        return self._parsed().query_string


class StreamResponse:
    """A response sent in pieces: ``prepare`` sends status and headers, ``write`` sends body bytes.

    Without a ``content_length`` the body is sent chunked (HTTP/1.1) or delimited by closing the
    connection (HTTP/1.0). ``Response`` (whole bodies) sends its head with the body in one write.
    """

    _head_now = True

    def __init__(self, *, status: int = 200, reason: str | None = None,
                 headers: dict[str, str] | Iterable[tuple[str, str]] | None = None) -> None:
        self.status = status
        self.reason = reason or _REASONS.get(status, "")
        self.headers: CIMultiDict[str] = CIMultiDict(headers or ())
        self.content_length: int | None = None
        self._conn: _Connection | None = None
        self._head = b""
        self._chunked = False
        self._no_body = False
        self._eof = False
        self._sent = 0

    @property
    def prepared(self) -> bool:
        return self._conn is not None

    async def prepare(self, request: Request) -> None:
        if self._conn is not None:
            return
        conn = request._conn
        headers = self.headers
        self._no_body = request.method == "HEAD" or self.status in _NO_BODY or self.status < 200
        if self.content_length is not None:
            headers["Content-Length"] = str(self.content_length)
        elif not self._no_body:
            if request.version == "1.1":
                self._chunked = True
                headers["Transfer-Encoding"] = "chunked"
            else:
                conn.keep_alive = False
        if not request.keep_alive:
            conn.keep_alive = False
        if not conn.keep_alive:
            headers["Connection"] = "close"
        elif request.version == "1.0":
            headers["Connection"] = "keep-alive"
        if "Date" not in headers:
            headers["Date"] = _date()
        lines = [f"HTTP/{request.version} {self.status} {self.reason}", *(f"{k}: {v}" for k, v in headers.items())]
        text = "\r\n".join(lines)
        if "\n" in text.replace("\r\n", "") or "\r" in text.replace("\r\n", ""):
            raise ValueError("newline or carriage return in a response header")
        self._head = (text + "\r\n\r\n").encode("utf-8", "surrogateescape")
        self._conn = conn
        request._started = True
        if self._head_now:  # as aiohttp: a stream's client sees the status before any event
            head, self._head = self._head, b""
            await conn.write(head)

    async def write(self, data: bytes) -> None:
        """Send body bytes now (raises ``ConnectionResetError`` once the client is gone)."""
        conn = self._conn
        if conn is None:
            raise RuntimeError("write() before prepare()")
        if self._eof:
            raise RuntimeError("write() after write_eof()")
        if not data or self._no_body:
            if self._head:
                head, self._head = self._head, b""
                await conn.write(head)
            return
        head, self._head = self._head, b""
        if self.content_length is not None:  # never more than announced (it would corrupt the next response)
            room = self.content_length - self._sent
            if len(data) > room:
                data = data[:room]
                conn.keep_alive = False
            self._sent += len(data)
        if self._chunked:
            if len(data) < 16384:
                await conn.write(b"%b%x\r\n%b\r\n" % (head, len(data), data))
            else:
                await conn.writelines([head, b"%x\r\n" % len(data), data, b"\r\n"])
        elif head:
            await conn.write(head + data if len(data) < 16384 else head)
            if len(data) >= 16384:
                await conn.write(data)
        else:
            await conn.write(data)

    async def write_eof(self, data: bytes = b"") -> None:
        if self._eof:
            return
        if data:
            await self.write(data)
        conn = self._conn
        assert conn is not None, "write_eof() before prepare()"
        self._eof = True
        if self.content_length is not None and self._sent != self.content_length and not self._no_body:
            conn.keep_alive = False  # a short body (the upstream broke off): only closing can tell the client
        tail = b"0\r\n\r\n" if self._chunked else b""
        head, self._head = self._head, b""
        if head or tail:
            await conn.write(head + tail)


class Response(StreamResponse):
    """A whole response (aiohttp's ``web.Response`` subset: ``body`` or ``text``, ``content_type``)."""

    _head_now = False

    def __init__(self, *, status: int = 200, reason: str | None = None, body: bytes | None = None,
                 text: str | None = None, content_type: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status=status, reason=reason, headers=headers)
        if text is not None:
            body = text.encode()
            content_type = f"{content_type or 'text/plain'}; charset=utf-8"
        self.body = body or b""
        if content_type is not None:
            self.headers["Content-Type"] = content_type
        elif self.body and "Content-Type" not in self.headers:
            self.headers["Content-Type"] = "application/octet-stream"
        self.content_length = len(self.body)

    async def send(self, request: Request) -> None:
        await self.prepare(request)
        await self.write_eof(self.body)


def json_response(data: Any, *, status: int = 200) -> Response:
    return Response(status=status, text=json.dumps(data), content_type="application/json")


class _Connection(asyncio.Protocol):
    """One client connection: parse requests, answer them in order, enforce the timeouts."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._loop = listener._loop
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.keep_alive = True
        self.closed = False
        self._url: list[bytes] = []
        self._headers: list[tuple[str, str]] = []
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._oversized = False
        self._in_request = False
        self._queue: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._paused_reading = False
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._upgrade: tuple[Request, int, list[bytes], int] | None = None  # request, length, kept bytes, bytes seen
        """An ``Upgrade`` request whose body is still being read (see ``_upgrading``)."""

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._listener._connections.add(self)
        self._set_deadline(self._listener.keepalive_timeout)

    def data_received(self, data: bytes) -> None:
        if self._upgrade is not None:
            self._upgrade_body(data)
            return
        try:
            self._parser.feed_data(data)
        except _Reject as exc:
            self._reject(exc.status, str(exc))
        except httptools.HttpParserUpgrade as exc:
            if self._upgrade is not None:
                self._upgrade_body(data[exc.args[0]:])
        except httptools.HttpParserError as exc:
            cause = exc.__context__ if isinstance(exc.__context__, _Reject) else None
            if cause is not None:
                self._reject(cause.status, str(cause))
            else:
                self._reject(400, f"Bad Request: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._listener._connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("the client closed the connection"))
            drain.exception()  # a drain nobody awaits must not log "never retrieved"

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- httptools callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_request = True
        self._url.clear()
        self._headers = []
        self._head_bytes = 0
        self._body = []
        self._body_size = 0
        self._oversized = False
        self._set_deadline(self._listener.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_bytes += len(url)
        if self._head_bytes > MAX_URL:
            raise _Reject(414, "URI Too Long")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self._head_bytes += size
        if size > MAX_FIELD or self._head_bytes > MAX_HEAD:
            raise _Reject(431, "Request Header Fields Too Large")
        self._headers.append((name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        self._set_deadline(self._listener.header_timeout)  # from here: the body may not stall longer
        for name, value in self._headers:
            if len(name) == 6 and name.lower() == "expect" and value.lower() == "100-continue":
                assert self.transport is not None
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._listener.max_body:
            self._oversized = True
            self._body.clear()
        else:
            self._body.append(body)
        self._set_deadline(self._listener.header_timeout)

    def on_message_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        request = Request(
            self, parser.get_method().decode("ascii", "replace"),
            b"".join(self._url).decode("utf-8", "surrogateescape"),
            CIMultiDictProxy(CIMultiDict(self._headers)),
            b"" if self._oversized else (self._body[0] if len(self._body) == 1 else b"".join(self._body)),
            self._oversized, version, parser.should_keep_alive(),
        )
        self._in_request = False
        self._body = []
        self._deadline = None
        if parser.should_upgrade():
            self._upgrading(request)
            return
        self._dispatch(request)

    def _dispatch(self, request: Request) -> None:
        self._queue.append(request)
        if self._task is None:
            self._task = self._loop.create_task(self._serve())
        elif len(self._queue) >= _MAX_QUEUED and self.transport is not None and not self._paused_reading:
            self._paused_reading = True
            self.transport.pause_reading()

    # -- Upgrade (e.g. curl's h2c): never switched; the request is served as plain HTTP/1.1 --------
    def _upgrading(self, request: Request) -> None:
        """The parser takes all that follows an ``Upgrade`` request's head for the new protocol, its
        body included; as aiohttp did, it is served as a plain request: the body is read here, then
        a fresh parser takes over the connection."""
        length = request.headers.get("Content-Length", "0").strip()
        if "Transfer-Encoding" in request.headers or not length.isdigit():
            self._reject(400, "Bad Request: a chunked body with Upgrade is not supported")
            return
        self._upgrade = (request, int(length), [], 0)
        self._in_request = True
        self._set_deadline(self._listener.header_timeout)

    def _upgrade_body(self, data: bytes) -> None:
        assert self._upgrade is not None
        request, need, parts, seen = self._upgrade
        oversized = need > self._listener.max_body
        if not oversized:
            parts.append(data)
        elif seen + len(data) > need:  # an oversized body is not kept: only the bytes after it are
            parts.append(data[need - seen:])
        seen += len(data)
        if seen < need:
            self._upgrade = (request, need, parts, seen)
            self._set_deadline(self._listener.header_timeout)
            return
        self._upgrade = None
        self._in_request = False
        self._deadline = None
        received = b"".join(parts)
        request.oversized = oversized
        request.body = b"" if oversized else received[:need]
        rest = received if oversized else received[need:]
        self._parser = httptools.HttpRequestParser(self)
        self._dispatch(request)
        if rest:
            self.data_received(rest)

    # -- answering -------------------------------------------------------------------------------
    async def _serve(self) -> None:
        """Answer queued requests in order; then wait for the next one (idle timeout)."""
        handler = self._listener.handler
        try:
            while self._queue and not self.closed:
                request = self._queue.popleft()
                if self._paused_reading and self.transport is not None:
                    self._paused_reading = False
                    self.transport.resume_reading()
                try:
                    response = await handler(request)
                    await self._finish(request, response)
                except (ConnectionResetError, ConnectionError):
                    self._close()
                    return
                except Exception as exc:  # a bug (or a bad header): answer 500 if nothing was sent yet
                    print(f"toolwatch proxy: error handling {request.method} {request.raw_path[:200]}: {exc!r}",
                          file=sys.stderr)
                    if request._started:
                        self._close()
                        return
                    try:
                        await Response(status=500, text="500 Internal Server Error").send(request)
                    except (ConnectionResetError, ConnectionError):
                        self._close()
                        return
                if not self.keep_alive:
                    self._close()
                    return
        finally:
            self._task = None
        if not self.closed and not self._in_request:
            self._set_deadline(self._listener.keepalive_timeout)

    async def _finish(self, request: Request, response: StreamResponse) -> None:
        """End the handler's response (sending it whole if the handler did not start it)."""
        if not response.prepared:
            if isinstance(response, Response):
                await response.send(request)
            else:
                await response.prepare(request)
                await response.write_eof()
        elif response._conn is not self:
            raise RuntimeError("response prepared for another connection")
        else:
            await response.write_eof()

    async def write(self, data: bytes) -> None:
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        transport.write(data)
        if self._write_paused:
            await self._wait_drain()

    async def writelines(self, parts: list[bytes]) -> None:
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        transport.writelines(parts)
        if self._write_paused:
            await self._wait_drain()

    async def _wait_drain(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = self._loop.create_future()
        await self._drain

    def _reject(self, status: int, message: str) -> None:
        """Answer a request the parser refused, then close (its framing can no longer be trusted)."""
        self.keep_alive = False
        self._in_request = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._task is None and not self._queue:
            body = f"{status} {message}".encode("utf-8", "replace")
            transport.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%b" % (status, _REASONS.get(status, "").encode(), len(body), body))
            self._close()
        else:  # a request is being answered: stop reading, close once it is done
            transport.pause_reading()

    def _close(self) -> None:
        self.keep_alive = False
        if self.transport is not None and not self.closed:
            self.transport.close()

    # -- timeouts (one timer per connection, never cancelled on the hot path) ------------------------
    def _set_deadline(self, seconds: float) -> None:
        """Move the deadline. The timer ticks at most ``tick`` apart and re-arms itself, so a deadline
        of ``now + seconds`` (``seconds >= tick``) is never missed and no request re-arms it."""
        now = self._loop.time()
        self._deadline = now + seconds
        if self._timer is None:
            self._timer = self._loop.call_at(min(self._deadline, now + self._listener.tick), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.closed:
            return
        now = self._loop.time()
        if now < deadline:
            self._timer = self._loop.call_at(min(deadline, now + self._listener.tick), self._on_timer)
            return
        self._deadline = None
        if self._task is not None:  # a response is under way: streams may be long-lived
            return
        if self._in_request:
            self._reject(408, "Request Timeout")
        else:
            self._close()


class Listener:
    """Serve ``handler`` on one host/port; each request arrives fully read (see ``Request``)."""

    def __init__(self, handler: Handler, *, max_body: int, keepalive_timeout: float = 75.0,
                 header_timeout: float = 30.0) -> None:
        self.handler = handler
        self.max_body = max_body
        self.keepalive_timeout = keepalive_timeout
        self.header_timeout = header_timeout
        self.tick = min(keepalive_timeout, header_timeout)
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen; return the bound port."""
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(lambda: _Connection(self), host, port)
        return self._server.sockets[0].getsockname()[1]

    async def close(self, grace: float = 2.0) -> None:
        """Stop listening; close idle connections; give running handlers ``grace`` seconds, then cancel."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self._connections):
            if conn._task is None:
                conn._close()
        tasks = [c._task for c in self._connections if c._task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        for conn in list(self._connections):
            conn._close()
