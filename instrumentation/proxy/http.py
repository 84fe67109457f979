"""The streamable HTTP proxy: forward each HTTP exchange unchanged, record on the side.

Request bodies are read (bounded by ``max_message_bytes``: larger ones get a 413 naming the
flag), responses — JSON or SSE — are streamed back chunk by chunk as they arrive, with
compression left untouched. Each chunk is written to the client before it is framed for the
tracker. One ``CallTracker`` per ``Mcp-Session-Id`` (LRU-bounded) keeps ids and server identity.
With ``worker`` options (what ``toolwatch proxy`` uses unless ``--in-process-spans`` or
``--enforce``), the trackers live in a worker process (``SpanWorker``) and this one only frames
observations.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from opentelemetry.trace import Tracer

from ..spans import RedactorLike
from .framing import Oversized, SseSplitter
from .listener import Listener, Request, Response, StreamResponse, json_response
from .stdio import SERVER_EXITED
from .enforce_http import KEEPALIVE_S, EventRelay, HttpEnforcement, Screening, needs_screening, screen, sse_event
from .tracker import CallTracker, ProxyStats, Recorder, SessionTrackers, id_key, request_ids, response_ids
from .upstream import UpstreamPool, UpstreamResponse
from .worker import SessionRef, SpanWorker, WorkerConfig, WorkerOptions

SESSION_HEADER = "mcp-session-id"
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
})


def _forwardable(headers: Any) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers.items() if k.lower() not in _HOP_BY_HOP]


def jsonrpc_errors(ids: list[Any], message: str, reason: str) -> bytes:
    """A JSON-RPC error per request id (a batch when there are several)."""
    errors = [{"jsonrpc": "2.0", "id": i, "error": {"code": SERVER_EXITED, "message": message,
                                                     "data": {"toolwatch": reason}}} for i in ids]
    return json.dumps(errors[0] if len(errors) == 1 else errors, separators=(",", ":")).encode()


_MAX_RELAYED = 10_000


def unanswered(ids: list[Any], relayed: list[bytes | Oversized]) -> list[Any]:
    """Those of ``ids`` that no relayed message answered (what ``CallTracker.fail_requests`` returns)."""
    answered = {id_key(response_id) for event in relayed for response_id in response_ids(event)}
    out = []
    for request_id in ids:  # each open id once, as the tracker fails it
        key = id_key(request_id)
        if key not in answered:
            answered.add(key)
            out.append(request_id)
    return out


class HttpProxy:
    """An HTTP server (``listener.py``) that forwards MCP streamable HTTP to one upstream URL.

    The upstream URL's path is the MCP endpoint: requests to ``/`` or to that path go to it;
    any other path (e.g. ``/.well-known/...``) goes to the same path on the upstream origin.
    """

    def __init__(
        self,
        upstream: str,
        *,
        tracer: Tracer | None = None,
        redactor: RedactorLike | None = None,
        stats: ProxyStats,
        agent_id: str,
        agent_name: str = "",
        server_name: str = "",
        max_message_bytes: int = 16 * 1024 * 1024,
        max_sessions: int = 1024,
        enforcement: HttpEnforcement | None = None,
        worker: WorkerOptions | None = None,
    ) -> None:
        if worker is None and (tracer is None or redactor is None):
            raise ValueError("HttpProxy needs a tracer and a redactor, or span worker options")
        if worker is not None and enforcement is not None:
            raise ValueError("enforcement reads the session trackers: it runs with in-process span work only")
        self.upstream = upstream
        self.enforcement = enforcement
        """Opt-in (``--enforce``): screen ``tools/call``/``tools/list`` before forwarding (enforce_http.py)."""
        parts = urlsplit(upstream)
        self._scheme = parts.scheme
        self._endpoint_path = parts.path or "/"
        self._address = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self.stats = stats
        self.max_message_bytes = max_message_bytes
        self.worker = None if worker is None else SpanWorker(
            WorkerConfig(agent_id=agent_id, agent_name=agent_name, server_name=server_name,
                         server_address=self._address, server_port=self._port, max_sessions=max_sessions,
                         service_name=worker.service_name, otlp_endpoint=worker.otlp_endpoint),
            stats, max_queue=worker.max_queue, restart_delay=worker.restart_delay, close_timeout=worker.close_timeout)
        """Span work in a worker process (``worker.py``); ``None``: in this process, via ``Recorder``."""
        self._sessions = None if worker is not None else SessionTrackers(
            tracer, redactor, stats, agent_id=agent_id, agent_name=agent_name,  # type: ignore[arg-type]
            server_name=server_name, server_address=self._address, server_port=self._port,
            max_sessions=max_sessions)
        self._recorder: Recorder | SpanWorker = self.worker if self.worker is not None else Recorder()
        self._pool: UpstreamPool | None = None
        """Keep-alive connections to the upstream, for every exchange (plain and enforced): a request that
        meets a connection the upstream has just closed (its idle timer) is sent again on a new one."""
        self._listener: Listener | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen; return the local base URL (with the upstream's MCP path)."""
        self._pool = UpstreamPool(self._scheme, self._address, self._port, connect_timeout=10)
        if self.worker is not None:
            await self.worker.start()
        self._listener = Listener(self.handle, max_body=self.max_message_bytes)
        bound = await self._listener.start(host, port)
        return f"http://{host}:{bound}{self._endpoint_path}"

    async def close(self) -> None:
        """Stop listening and record what is still queued. Safe twice, safe without start."""
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self.enforcement is not None:
            await self.enforcement.close()
        self._recorder.flush()
        if self.worker is not None:
            await self.worker.close()

    # -- sessions -------------------------------------------------------------------------------
    def _tracker(self, session_id: str) -> Any:
        """The session's ``CallTracker`` (in-process) or a ``SessionRef`` naming it to the worker."""
        if self._sessions is None:
            return SessionRef(session_id)
        return self._sessions.get(session_id)

    def _forget(self, session_id: str) -> None:
        if self._sessions is not None:
            self._sessions.forget(session_id)
        elif self.worker is not None:
            self.worker.delete(session_id)

    def _raw_target(self, request: Request) -> str:
        """Path and query as the client sent them (not re-encoded), mapped onto the upstream."""
        path, sep, query = request.raw_path.partition("?")
        if path in ("/", self._endpoint_path):
            path = self._endpoint_path
        return f"{path}{sep}{query}"

    # -- forwarding -----------------------------------------------------------------------------
    async def handle(self, request: Request) -> StreamResponse:
        t_request = time.time_ns()
        body = request.body
        if request.oversized:
            self.stats.oversized["c2s"] += 1
            return json_response(
                {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": (
                    f"toolwatch proxy: request body larger than --max-message-bytes "
                    f"({self.max_message_bytes}); raise it to forward larger messages")}},
                status=413,
            )
        assert self._pool is not None, "HttpProxy.start() was not called"
        if self.enforcement is not None:
            return await self._handle_enforced(request, body, t_request)
        if request.method == "GET":  # a long-lived event stream: not a hot path to protect
            return await self._forward(request, body, t_request)
        recorder = self._recorder
        recorder.hold()
        try:
            return await self._forward(request, body, t_request)
        finally:
            recorder.release()

    async def _forward(self, request: Request, body: bytes, t_request: int) -> StreamResponse:
        """Forward one exchange; span work waits (``Recorder.hold``) except while the upstream thinks."""
        assert self._pool is not None
        hot = request.method != "GET"
        if hot:
            self._recorder.release()
        try:
            upstream = await self._pool.request(
                request.method, self._raw_target(request), _forwardable(request.headers), body)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return self._unreachable(body, exc)
        finally:
            if hot:
                self._recorder.hold()
        async with upstream:
            session_id = request.headers.get(SESSION_HEADER) or upstream.headers.get(SESSION_HEADER) or ""
            tracker = self._tracker(session_id)
            if body:
                self._recorder.submit(tracker, "c2s", body, t_request)
            response = await self._relay(request, upstream, tracker, body)
        if request.method == "DELETE" and session_id:
            self._forget(session_id)
        return response

    # -- enforcement (opt-in) --------------------------------------------------------------------
    async def _handle_enforced(self, request: Request, body: bytes, t_request: int) -> StreamResponse:
        """Screen tools/call and tools/list POSTs first; relay GET streams event by event (for injections)."""
        assert self.enforcement is not None and self._pool is not None
        session_id = request.headers.get(SESSION_HEADER) or ""
        screening: Screening | None = None
        enforcer = None
        held: StreamResponse | None = None
        listing = False
        if request.method == "POST" and body:
            try:
                message = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                message = None
            if needs_screening(message):
                listing = b'"tools/list"' in body
                enforcer = self.enforcement.enforcer(session_id, self._tracker(session_id), self._recorder)
                screening = await screen(enforcer, body)
                if screening.held:
                    held = await self._wait_held(request, screening, session_id)
                if screening.answers:
                    return await self._answer(request, held, screening.answer_body())
        headers = [(k, v) for k, v in _forwardable(request.headers) if k.lower() != "accept-encoding"]
        try:
            upstream = await self._pool.request(request.method, self._raw_target(request), headers, body)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            if held is not None:
                await self._answer(request, held, self._unreachable(body, exc).body)  # type: ignore[arg-type]
                return held
            return self._unreachable(body, exc)
        async with upstream:
            session_id = session_id or upstream.headers.get(SESSION_HEADER) or ""
            tracker = self._tracker(session_id)
            is_sse = upstream.headers.get("Content-Type", "").startswith("text/event-stream")
            encoded = bool(upstream.headers.get("Content-Encoding"))
            if screening is None:
                if body:
                    self._recorder.submit(tracker, "c2s", body, t_request)
                if not (request.method == "GET" and is_sse and not encoded):
                    response = await self._relay(request, upstream, tracker, body)
                    if request.method == "DELETE" and session_id:
                        self._forget(session_id)
                        self.enforcement.end_session(session_id)
                    return response
            if held is not None and encoded:
                return await self._answer(request, held, jsonrpc_errors(request_ids(body), (
                    "toolwatch proxy: the upstream compressed its answer to a held call; it cannot be relayed "
                    "on the held SSE stream"), "upstream_encoded"))
            if encoded or (held is None and not listing and not is_sse):
                # nothing to filter (or nothing readable): stream it as the plain proxy does
                return await self._relay(request, upstream, tracker, body)
            return await self._relay_events(request, upstream, tracker, body, enforcer, held, session_id)

    async def _wait_held(self, request: Request, screening: Screening, session_id: str) -> StreamResponse | None:
        """A held call: the POST waits. Over SSE (when the client accepts it) with keep-alive comments."""
        if "text/event-stream" not in request.headers.get("Accept", ""):
            await asyncio.shield(screening.decided)
            return None
        response = StreamResponse(status=200, headers={"Content-Type": "text/event-stream",
                                                           "Cache-Control": "no-cache"})
        if session_id:
            response.headers[SESSION_HEADER] = session_id
        await response.prepare(request)
        await response.write(b": toolwatch: this call is held for human approval\n\n")
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(screening.decided), KEEPALIVE_S)
                return response
            except asyncio.TimeoutError:
                await response.write(b": toolwatch: still waiting for approval\n\n")

    async def _answer(self, request: Request, held: StreamResponse | None, answer: bytes) -> StreamResponse:
        """The proxy's own answer to a POST (a refusal): a JSON body, or an event on the held SSE response."""
        if held is None:
            return Response(status=200, body=answer, content_type="application/json")
        try:
            await held.write(sse_event(answer))
            await held.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass
        return held

    async def _relay_events(
        self, request: Request, upstream: UpstreamResponse, tracker: CallTracker, body: bytes,
        enforcer: Any, held: StreamResponse | None, session_id: str,
    ) -> StreamResponse:
        """Relay a response whole event by whole event (SSE) or as one filtered body (JSON)."""
        is_sse = upstream.headers.get("Content-Type", "").startswith("text/event-stream")
        if held is not None:
            response = held
        else:
            response = StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in _forwardable(upstream.headers):
                response.headers.add(key, value)
        if not is_sse:
            data = await upstream.read()
            if data:
                self._recorder.submit(tracker, "s2c", data if len(data) <= self.max_message_bytes else
                                      Oversized(data[:4096], len(data)), time.time_ns())
            out = await enforcer.from_server(data) if enforcer is not None and data else data
            if held is not None:
                return await self._answer(request, held, out if out.strip() else jsonrpc_errors(
                    request_ids(body), f"toolwatch proxy: upstream answered HTTP {upstream.status} with no body",
                    "upstream_error"))
            response.content_length = len(out)
            await response.prepare(request)
            await response.write(out)
            await response.write_eof()
            return response
        if held is None:
            await response.prepare(request)
        relay = EventRelay(response, enforcer, tracker, self._recorder, self.max_message_bytes, time.time_ns)
        queued = self.enforcement.streams.attach(session_id, relay) if request.method == "GET" and self.enforcement else []
        try:
            for message in queued:
                await relay.inject(message)
            async for chunk in upstream.content.iter_any():
                await relay.feed(chunk)
            await relay.finish()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            await self._answer_broken_stream(response, tracker, body, True, exc)
            return response
        except (ConnectionResetError, ConnectionError):
            return response
        finally:
            if request.method == "GET" and self.enforcement is not None:
                self.enforcement.streams.detach(session_id, relay)
        try:
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass
        return response

    def _unreachable(self, body: bytes, exc: BaseException) -> Response:
        message = f"toolwatch proxy: upstream MCP server {self.upstream} is unreachable: {exc or type(exc).__name__}"
        print(message, file=sys.stderr)
        ids = request_ids(body) if body else []
        if ids:
            return Response(status=502, body=jsonrpc_errors(ids, message, "upstream_unreachable"),
                                content_type="application/json")
        return Response(status=502, text=message)

    async def _relay(
        self, request: Request, upstream: UpstreamResponse, tracker: CallTracker,
        body: bytes,
    ) -> StreamResponse:
        response = StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in _forwardable(upstream.headers):
            response.headers.add(key, value)
        is_sse = upstream.headers.get("Content-Type", "").startswith("text/event-stream")
        if not is_sse and upstream.content_length is not None:
            response.content_length = upstream.content_length
        encoded = bool(upstream.headers.get("Content-Encoding"))
        await response.prepare(request)
        sse = SseSplitter(self.max_message_bytes) if is_sse and not encoded else None
        # worker mode: the answers relayed so far, to tell which requests a broken stream left open
        relayed: list[bytes | Oversized] | None = [] if self.worker is not None and body and sse else None
        collected = bytearray()
        size = 0
        t_last = time.time_ns()
        try:
            async for chunk in upstream.content.iter_any():
                t_last = time.time_ns()
                await response.write(chunk)
                if sse is not None:
                    for event in sse.feed(chunk):
                        self._recorder.submit(tracker, "s2c", event, t_last)
                        if relayed is not None and len(relayed) < _MAX_RELAYED:
                            relayed.append(event)
                elif not is_sse and not encoded:
                    size += len(chunk)
                    if size <= self.max_message_bytes:
                        collected += chunk
                    elif len(collected) < 4096:
                        collected += chunk[: 4096 - len(collected)]
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            await self._answer_broken_stream(response, tracker, body, is_sse, exc, relayed)
            return response
        except (ConnectionResetError, ConnectionError):
            return response  # the client went away; nothing to answer
        if not is_sse and not encoded and size:
            observed: bytes | Oversized = bytes(collected) if size <= self.max_message_bytes else Oversized(
                bytes(collected[:4096]), size)
            self._recorder.submit(tracker, "s2c", observed, t_last)
        try:
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass
        return response

    async def _answer_broken_stream(
        self, response: StreamResponse, tracker: CallTracker | SessionRef, body: bytes, is_sse: bool,
        exc: BaseException, relayed: list[bytes | Oversized] | None = None,
    ) -> None:
        """The upstream died mid-response: answer this exchange's open requests on the SSE stream."""
        self._recorder.flush()
        if isinstance(tracker, SessionRef):  # the tracker is in the worker: it closes the spans
            ids = unanswered(request_ids(body), relayed or []) if body else []
            if body:
                self._recorder.fail(tracker.session_id, request_ids(body), "server_exited", time.time_ns())  # type: ignore[union-attr]
        else:
            ids = tracker.fail_requests(request_ids(body), "server_exited") if body else []
        message = f"toolwatch proxy: upstream MCP server {self.upstream} broke off the response: {exc!r}"
        print(message, file=sys.stderr)
        if is_sse and ids:
            events = b"".join(
                b"event: message\ndata: " + jsonrpc_errors([i], message, "server_exited") + b"\n\n" for i in ids
            )
            try:
                await response.write(events)
                await response.write_eof()
            except (ConnectionResetError, ConnectionError):
                pass


async def serve_http_proxy(
    host: str,
    port: int,
    upstream: str,
    *,
    tracer: Tracer | None = None,
    redactor: RedactorLike | None = None,
    stats: ProxyStats,
    agent_id: str,
    agent_name: str = "",
    server_name: str = "",
    max_message_bytes: int = 16 * 1024 * 1024,
    enforcement: HttpEnforcement | None = None,
    worker: WorkerOptions | None = None,
) -> int:
    """Run the HTTP proxy until SIGINT/SIGTERM; return the exit code."""
    proxy = HttpProxy(upstream, tracer=tracer, redactor=redactor, stats=stats, agent_id=agent_id,
                      agent_name=agent_name, server_name=server_name, max_message_bytes=max_message_bytes,
                      enforcement=enforcement, worker=worker)
    try:
        url = await proxy.start(host, port)
    except OSError as exc:
        print(f"toolwatch proxy: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 2
    print(f"toolwatch proxy: listening on {url} -> {upstream}", file=sys.stderr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await stop.wait()
    finally:
        await proxy.close()
        if os.environ.get("TOOLWATCH_PROXY_STATS"):
            print(f"toolwatch proxy: {stats.summary()}", file=sys.stderr, flush=True)
        if enforcement is not None:
            print(f"toolwatch proxy: {enforcement.client.stats.summary()}", file=sys.stderr, flush=True)
    return 0
