"""Pair JSON-RPC requests and responses seen by the proxy and turn tool traffic into spans.

The proxy forwards first and calls ``Recorder.submit`` afterwards; the recorder queues the raw
message (bounded, drops are counted) and the ``CallTracker`` parses it later on the event loop,
so parsing and span building never delay a forwarded byte.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry.trace import Tracer

from .. import semconv as sc
from ..spans import RedactorLike, SessionInfo, record_span, span_name, tool_call_attributes, tool_list_attributes
from .framing import Oversized

_MISSING = object()
Direction = Literal["c2s", "s2c"]
"""``c2s``: client to server; ``s2c``: server to client."""

METHOD_DISCOVER = "server/discover"
_TRACKED = frozenset({sc.METHOD_TOOLS_CALL, sc.METHOD_TOOLS_LIST, sc.METHOD_INITIALIZE, METHOD_DISCOVER})
_ID_IN_HEAD = re.compile(rb'"id"\s*:\s*(-?\d+|"(?:[^"\\]|\\.)*")')


@dataclass(slots=True)
class ProxyStats:
    """Counters the proxy reports on exit (and tests read)."""

    messages: dict[str, int] = field(default_factory=lambda: {"c2s": 0, "s2c": 0})
    invalid_json: dict[str, int] = field(default_factory=lambda: {"c2s": 0, "s2c": 0})
    oversized: dict[str, int] = field(default_factory=lambda: {"c2s": 0, "s2c": 0})
    dropped_observations: int = 0
    dropped_pending: int = 0
    spans: int = 0

    def summary(self) -> str:
        return (
            f"messages c2s={self.messages['c2s']} s2c={self.messages['s2c']}, "
            f"invalid JSON c2s={self.invalid_json['c2s']} s2c={self.invalid_json['s2c']}, "
            f"oversized c2s={self.oversized['c2s']} s2c={self.oversized['s2c']}, "
            f"spans={self.spans}, dropped observations={self.dropped_observations}"
        )


@dataclass(slots=True)
class _Pending:
    method: str
    params: Any
    start_ns: int


def _messages(raw: bytes) -> list[Any]:
    """The messages of a JSON-RPC message or batch (empty when it does not parse)."""
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return []
    return value if isinstance(value, list) else [value]


def request_ids(raw: bytes) -> list[Any]:
    """Ids of the JSON-RPC requests in a message or batch (empty when it does not parse)."""
    return [m["id"] for m in _messages(raw)
            if isinstance(m, dict) and isinstance(m.get("method"), str) and m.get("id") is not None]


def _head_id(raw: Oversized) -> Any:
    """The id in an oversized message's first bytes, what it is paired by (``_MISSING`` when none parses)."""
    match = _ID_IN_HEAD.search(raw.head)
    if match is None:
        return _MISSING
    try:
        return json.loads(match.group(1))
    except ValueError:
        return _MISSING


def response_ids(raw: bytes | Oversized) -> list[Any]:
    """Ids of the JSON-RPC responses in a server's message or batch, as ``CallTracker.observe`` pairs them.

    A response is a message with an id and no method; an oversized message is paired by the id in its first bytes.
    """
    if isinstance(raw, Oversized):
        request_id = _head_id(raw)
        return [] if request_id is _MISSING else [request_id]
    return [m["id"] for m in _messages(raw)
            if isinstance(m, dict) and not isinstance(m.get("method"), str) and m.get("id") is not None]


def id_key(request_id: Any) -> str:
    """Dictionary key for a JSON-RPC id; ``1`` and ``"1"`` stay distinct."""
    return json.dumps(request_id, sort_keys=True)


class CallTracker:
    """State of one MCP session as the proxy sees it: in-flight requests and server identity."""

    def __init__(
        self,
        info: SessionInfo,
        tracer: Tracer,
        redactor: RedactorLike,
        stats: ProxyStats,
        *,
        max_pending: int = 10_000,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.info = info
        self._tracer = tracer
        self._redactor = redactor
        self.stats = stats
        self._max_pending = max_pending
        self._clock = clock
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        """Client requests awaiting the server's answer, by id key (tool/list/initialize only)."""
        self._inflight: OrderedDict[str, Any] = OrderedDict()
        """Every client request id awaiting an answer: what a crash must answer with an error."""

    # -- input ----------------------------------------------------------------------------------
    def observe(self, direction: Direction, raw: bytes | Oversized, t_ns: int) -> None:
        """Account one framed message (a line, an SSE event or an HTTP body)."""
        self.stats.messages[direction] += 1
        if isinstance(raw, Oversized):
            self.stats.oversized[direction] += 1
            self._observe_oversized(direction, raw, t_ns)
            return
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self.stats.invalid_json[direction] += 1
            return
        messages = value if isinstance(value, list) else [value]
        for message in messages:
            if isinstance(message, dict):
                self._observe_message(direction, message, t_ns)
            else:
                self.stats.invalid_json[direction] += 1

    def _observe_message(self, direction: Direction, msg: dict[str, Any], t_ns: int) -> None:
        method = msg.get("method")
        has_id = "id" in msg and msg["id"] is not None
        if isinstance(method, str) and has_id:
            if direction == "c2s":
                self.info.adopt_request_meta(msg.get("params"))
                self._remember(self._inflight, id_key(msg["id"]), msg["id"])
                if method in _TRACKED:
                    self._remember(self._pending, id_key(msg["id"]), _Pending(method, msg.get("params"), t_ns))
            return
        if isinstance(method, str):
            self._observe_notification(direction, method, msg.get("params"), t_ns)
            return
        if has_id and direction == "s2c":
            key = id_key(msg["id"])
            self._inflight.pop(key, None)
            pending = self._pending.pop(key, None)
            if pending is not None:
                result = msg.get("result")
                error = msg.get("error")
                self._finish(pending, msg["id"], t_ns,
                             result=result if isinstance(result, dict) else None,
                             error=error if isinstance(error, dict) else None)

    def _observe_notification(self, direction: Direction, method: str, params: Any, t_ns: int) -> None:
        if direction == "s2c" and method == sc.METHOD_LIST_CHANGED:
            self.info.list_changed_pending = True
        elif direction == "c2s" and method == "notifications/cancelled" and isinstance(params, dict):
            request_id = params.get("requestId")
            key = id_key(request_id)
            self._inflight.pop(key, None)
            pending = self._pending.pop(key, None)
            if pending is not None:
                self._finish(pending, request_id, t_ns, error_type="cancelled")

    def _observe_oversized(self, direction: Direction, raw: Oversized, t_ns: int) -> None:
        """Pair an oversized response by the id in its first bytes; it is not scanned."""
        if direction != "s2c":
            return
        request_id = _head_id(raw)
        if request_id is _MISSING:
            return
        key = id_key(request_id)
        self._inflight.pop(key, None)
        pending = self._pending.pop(key, None)
        if pending is not None:
            self._finish(pending, request_id, t_ns, oversized=raw.size)

    def _remember(self, table: OrderedDict[str, Any], key: str, value: Any) -> None:
        table[key] = value
        while len(table) > self._max_pending:
            table.popitem(last=False)
            self.stats.dropped_pending += 1

    # -- output ---------------------------------------------------------------------------------
    def inflight_ids(self) -> list[Any]:
        """Ids of client requests the server has not answered yet, oldest first."""
        return list(self._inflight.values())

    def fail_inflight(self, error_type: str) -> list[Any]:
        """Close every in-flight request (their spans get ``error_type``); return their ids."""
        return self.fail_requests(self.inflight_ids(), error_type)

    def fail_requests(self, request_ids: list[Any], error_type: str, *, now_ns: int | None = None) -> list[Any]:
        """Close those of ``request_ids`` still unanswered; return them (the caller answers the client).

        ``now_ns``: when the failure was seen, if not now (the span worker replays it later).
        """
        now = self._clock() if now_ns is None else now_ns
        failed = []
        for request_id in request_ids:
            key = id_key(request_id)
            if self._inflight.pop(key, _MISSING) is _MISSING:
                continue
            failed.append(request_id)
            pending = self._pending.pop(key, None)
            if pending is not None:
                self._finish(pending, request_id, now, error_type=error_type)
        return failed

    def _finish(
        self,
        pending: _Pending,
        request_id: Any,
        end_ns: int,
        *,
        result: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
        error_type: str | None = None,
        oversized: int | None = None,
    ) -> None:
        params = pending.params if isinstance(pending.params, dict) else {}
        if pending.method == sc.METHOD_INITIALIZE:
            if result is not None:
                self.info.adopt_initialize_result(result)
            return
        if pending.method == METHOD_DISCOVER:
            if result is not None:
                self.info.adopt_discover_result(result)
            return
        if pending.method == sc.METHOD_TOOLS_LIST:
            tools = result.get("tools") if result is not None else None
            attrs, status = tool_list_attributes(
                self.info, tools=tools if isinstance(tools, list) else None, request_id=request_id,
                error=error, error_type=error_type if oversized is None else None,
            )
            name = sc.METHOD_TOOLS_LIST
        else:
            tool = params.get("name")
            tool = tool if isinstance(tool, str) else ""
            attrs, status = tool_call_attributes(
                self.info, self._redactor, tool=tool, arguments=params.get("arguments"),
                request_id=request_id, result=result, error=error, error_type=error_type,
            )
            if oversized is not None:
                attrs[sc.TW_RESULT_BYTES] = oversized
                attrs[sc.TW_RESULT_LABELS] = ["oversized"]
            name = span_name(sc.METHOD_TOOLS_CALL, tool)
        record_span(self._tracer, name, attrs, start_ns=pending.start_ns, end_ns=end_ns, status=status)
        self.stats.spans += 1


class SessionTrackers:
    """One ``CallTracker`` per ``Mcp-Session-Id`` (LRU-bounded), as the HTTP proxy or its span worker keeps them."""

    def __init__(
        self, tracer: Tracer, redactor: RedactorLike, stats: ProxyStats, *, agent_id: str, agent_name: str = "",
        server_name: str = "", server_address: str = "", server_port: int = 0, max_sessions: int = 1024,
    ) -> None:
        self._tracer, self._redactor, self.stats = tracer, redactor, stats
        self._agent = (agent_id, agent_name, server_name)
        self._server = (server_address, server_port)
        self._max_sessions = max_sessions
        self._trackers: OrderedDict[str, CallTracker] = OrderedDict()

    def get(self, session_id: str) -> CallTracker:
        """The session's tracker (made on first sight; ``""`` is the one session without an id yet)."""
        tracker = self._trackers.get(session_id)
        if tracker is not None:
            self._trackers.move_to_end(session_id)
            return tracker
        agent_id, agent_name, server_name = self._agent
        info = SessionInfo(
            agent_id=agent_id, agent_name=agent_name, server_name=server_name,
            session_id=session_id or uuid.uuid4().hex, transport="tcp",
            server_address=self._server[0], server_port=self._server[1], emitter="proxy",
        )
        tracker = CallTracker(info, self._tracer, self._redactor, self.stats)
        self._trackers[session_id] = tracker
        while len(self._trackers) > self._max_sessions:
            self._trackers.popitem(last=False)
        return tracker

    def forget(self, session_id: str) -> None:
        """The session ended (HTTP DELETE)."""
        self._trackers.pop(session_id, None)


class Recorder:
    """Bounded queue between the forwarding path and the tracker; drains on the event loop when idle.

    Parsing, redaction and span building never run while an exchange is on its hot path (request
    read -> forwarded, response started -> finished; see ``hold``/``release``): a message queued
    then waits until the last hot exchange ends, so the peer gets its bytes first. Draining takes
    slices of ``slice_s`` (at least one message) per loop iteration, so bytes that arrive
    meanwhile wait at most about one slice. ``delay`` is how long a submitted message may wait before a drain is tried at all (stdio
    and long-lived streams never call ``release``); ``max_wait`` bounds how long a backlog defers
    to hot exchanges under constant load before it is drained anyway.
    """

    def __init__(
        self, max_queue: int = 10_000, delay: float = 0.002, *, max_wait: float = 0.25, slice_s: float = 0.0005
    ) -> None:
        self._queue: deque[tuple[CallTracker, Direction, bytes | Oversized, int]] = deque()
        self._max_queue = max_queue
        self._delay = delay
        self._max_wait = max_wait
        self._slice = slice_s
        self._hot = 0
        self._waiting_since: float | None = None
        self._handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._soon = False

    def submit(self, tracker: CallTracker, direction: Direction, raw: bytes | Oversized, t_ns: int) -> None:
        """Called right after a message was forwarded; never parses, never blocks."""
        if len(self._queue) >= self._max_queue:
            tracker.stats.dropped_observations += 1
            return
        self._queue.append((tracker, direction, raw, t_ns))
        if self._handle is None:
            self._schedule(self._delay)

    # -- hot path bracketing (HTTP) --------------------------------------------------------------
    def hold(self) -> None:
        """An exchange entered its hot path: defer draining until ``release``."""
        self._hot += 1

    def release(self) -> None:
        """An exchange left its hot path; the last one out starts draining at once."""
        self._hot = max(0, self._hot - 1)
        if self._hot == 0 and self._queue and not self._soon:
            self._schedule(0)

    # -- draining -------------------------------------------------------------------------------
    def _schedule(self, delay: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        loop = asyncio.get_running_loop()
        self._soon = delay <= 0
        if self._soon:
            self._handle = loop.call_soon(self._drain_some)
        else:
            self._handle = loop.call_later(delay, self._drain_some)

    def _drain_some(self) -> None:
        self._handle = None
        self._soon = False
        if not self._queue:
            return
        if self._hot:
            now = time.monotonic()
            if self._waiting_since is None:
                self._waiting_since = now
            if now - self._waiting_since < self._max_wait and len(self._queue) < self._max_queue // 2:
                self._schedule(max(self._delay, 0.001))  # ``release`` will usually come first
                return
        self._waiting_since = None
        deadline = time.perf_counter() + self._slice
        queue = self._queue
        while queue:
            self._observe_one()
            if time.perf_counter() >= deadline:
                break
        if queue:
            self._schedule(0)

    def _observe_one(self) -> None:
        tracker, direction, raw, t_ns = self._queue.popleft()
        try:
            tracker.observe(direction, raw, t_ns)
        except Exception as exc:  # a bug here must never take the proxy down
            import sys

            print(f"toolwatch proxy: could not record a message: {exc!r}", file=sys.stderr)

    def flush(self) -> None:
        """Observe everything queued now (before answering in-flight requests on a crash)."""
        while self._queue:
            self._observe_one()
