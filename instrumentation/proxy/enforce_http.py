"""Enforcement for the streamable HTTP proxy: the same ``Enforcer`` as stdio, fed per HTTP exchange.

Why a separate module: stdio enforcement works on lines of two long-lived pipes; over HTTP each
client message is one POST whose answer is that POST's response (JSON or an SSE stream), and
the server's own messages arrive on the session's GET stream. This module adapts the two:

* ``screen`` runs one POST body through ``Enforcer.from_client`` and reports what it did:
  forwarded (the proxy then sends the body upstream), answered (a refusal, sent as the POST's
  response, never forwarded) or held (the POST waits; if the client accepts SSE it gets an SSE
  response at once, with keep-alive comments, so its read timeout does not fire while a human
  decides).
* ``EventRelay`` relays an upstream response event by event, so ``tools/list`` results lose
  their quarantined tools (``Enforcer.from_server``) and the proxy's own notifications are only
  ever written between two whole events.
* ``SessionStreams`` keeps each session's open GET stream: ``notifications/tools/list_changed``
  (a hidden tool was approved) goes there, or waits for the next GET stream when none is open.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .. import semconv as sc
from .decisions import DecisionClient
from .enforce import Enforcer
from .listener import StreamResponse
from .tracker import CallTracker, Recorder

__all__ = ["HttpEnforcement", "Screening", "EventRelay", "SessionStreams", "screen", "sse_event", "needs_screening"]

KEEPALIVE_S = 10.0
"""While a held call waits, an SSE comment is sent this often (keeps client and intermediaries patient)."""

def sse_event(message: bytes) -> bytes:
    """One SSE ``message`` event carrying a JSON-RPC message (one ``data:`` line per line of it)."""
    lines = message.splitlines() or [b""]
    return b"event: message\n" + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


def needs_screening(message: Any) -> bool:
    """A ``tools/call`` or ``tools/list`` request, alone or inside a batch, goes through the enforcer."""
    methods = (sc.METHOD_TOOLS_CALL, sc.METHOD_TOOLS_LIST)
    if isinstance(message, dict):
        return message.get("method") in methods
    if isinstance(message, list):
        return any(isinstance(m, dict) and m.get("method") in methods for m in message)
    return False


@dataclass(slots=True)
class Screening:
    """What the enforcer did with one POST body: forwarded it, answered it, or holds it."""

    forwarded: bool = False
    answers: list[bytes] = field(default_factory=list)
    decided: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def held(self) -> bool:
        return not self.decided.done()

    def answer_body(self) -> bytes:
        """The refusal(s) as one JSON body: a single object, or a batch for several."""
        if len(self.answers) == 1:
            return self.answers[0]
        return b"[" + b",".join(self.answers) + b"]"

    async def _to_server(self, data: bytes) -> None:
        self.forwarded = True
        if not self.decided.done():
            self.decided.set_result(None)

    async def _to_client(self, data: bytes) -> None:
        self.answers.append(data)
        if not self.decided.done():
            self.decided.set_result(None)


async def screen(enforcer: Enforcer, body: bytes) -> Screening:
    """Run one POST body through the enforcer; forwarding is left to the caller (nothing is sent here).

    A held call's outcome arrives later: await ``Screening.decided``. If the caller goes away
    first (the client closed its POST), the held call is simply never forwarded.
    """
    screening = Screening()
    await enforcer.from_client(body, screening._to_server, screening._to_client)
    return screening


class SessionStreams:
    """Per session: the GET streams open to the client, and notifications waiting for one."""

    def __init__(self, max_sessions: int = 1024, max_queued: int = 16) -> None:
        self._open: dict[str, list[EventRelay]] = {}
        self._queued: OrderedDict[str, list[bytes]] = OrderedDict()
        self._max_sessions = max_sessions
        self._max_queued = max_queued

    def attach(self, session_id: str, relay: "EventRelay") -> list[bytes]:
        """A GET stream opened; returns the notifications queued for it."""
        self._open.setdefault(session_id, []).append(relay)
        return self._queued.pop(session_id, [])

    def detach(self, session_id: str, relay: "EventRelay") -> None:
        relays = self._open.get(session_id, [])
        if relay in relays:
            relays.remove(relay)
        if not relays:
            self._open.pop(session_id, None)

    async def notify(self, session_id: str, message: bytes) -> None:
        """Send on the session's newest GET stream; queue (bounded, deduplicated) when none is open."""
        relays = self._open.get(session_id)
        if relays:
            await relays[-1].inject(message)
            return
        queue = self._queued.setdefault(session_id, [])
        self._queued.move_to_end(session_id)
        if message not in queue and len(queue) < self._max_queued:
            queue.append(message)
        while len(self._queued) > self._max_sessions:
            self._queued.popitem(last=False)

    def forget(self, session_id: str) -> None:
        self._queued.pop(session_id, None)


class EventRelay:
    """Relay one upstream SSE stream to the client event by event, filtering ``tools/list`` results.

    Whole events are written in one ``write``; an event longer than ``max_bytes`` streams through
    unparsed, and notifications injected meanwhile wait until it ends.
    """

    def __init__(self, response: StreamResponse, enforcer: Enforcer | None, tracker: CallTracker,
                 recorder: Recorder, max_bytes: int, now_ns: Callable[[], int]) -> None:
        self.response = response
        self.enforcer = enforcer
        self.tracker = tracker
        self.recorder = recorder
        self.max_bytes = max_bytes
        self.now_ns = now_ns
        self._buf = bytearray()
        self._mid_event = False
        self._pending: list[bytes] = []

    async def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        if b"\r" in self._buf:  # CRLF -> LF, also when a chunk ends between \r and \n
            self._buf = bytearray(self._buf.replace(b"\r\n", b"\n"))
        while True:
            end = self._buf.find(b"\n\n")
            if self._mid_event:  # the rest of an oversized event streams through
                upto = len(self._buf) if end < 0 else end + 2
                await self.response.write(bytes(self._buf[:upto]))
                del self._buf[:upto]
                if end < 0:
                    return
                self._mid_event = False
                await self._flush_pending()
                continue
            if end < 0:
                if len(self._buf) > self.max_bytes:
                    self._mid_event = True
                    await self.response.write(bytes(self._buf))
                    self._buf.clear()
                return
            event = bytes(self._buf[: end + 2])
            del self._buf[: end + 2]
            await self.response.write(await self._event(event))

    async def finish(self) -> None:
        """The upstream ended: whatever is left (an unterminated event) goes through as is."""
        if self._buf:
            await self.response.write(bytes(self._buf))
            self._buf.clear()
        self._mid_event = False

    async def _event(self, event: bytes) -> bytes:
        lines = event.split(b"\n")
        data = [ln[5:].removeprefix(b" ") for ln in lines if ln.startswith(b"data:")]
        if not data:
            return event
        message = b"\n".join(data)
        self.recorder.submit(self.tracker, "s2c", message, self.now_ns())
        if self.enforcer is None:
            return event
        out = await self.enforcer.from_server(message)
        if out is message:
            return event
        kept = [ln for ln in lines if ln and not ln.startswith(b"data:")]
        return b"\n".join([*kept, b"data: " + out]) + b"\n\n"

    async def inject(self, message: bytes) -> None:
        """A message of the proxy's own (e.g. ``list_changed``), written between two whole events."""
        if self._mid_event:
            self._pending.append(message)
            return
        try:
            await self.response.write(sse_event(message))
        except (ConnectionResetError, ConnectionError, RuntimeError):
            pass

    async def _flush_pending(self) -> None:
        pending, self._pending = self._pending, []
        for message in pending:
            await self.inject(message)


class HttpEnforcement:
    """One ``Enforcer`` per MCP session, all sharing the proxy's ``DecisionClient``; and the session streams."""

    def __init__(self, client: DecisionClient, redactor: Any, *, now_ns: Callable[[], int] = time.time_ns,
                 max_sessions: int = 1024) -> None:
        self.client = client
        self._redactor = redactor
        self._now_ns = now_ns
        self._enforcers: OrderedDict[str, Enforcer] = OrderedDict()
        self._max_sessions = max_sessions
        self.streams = SessionStreams(max_sessions)
        self._closing: set[asyncio.Task[None]] = set()

    def _make(self, tracker: CallTracker, recorder: Recorder) -> Enforcer:
        return Enforcer(self.client, tracker, recorder, self._redactor, now_ns=self._now_ns)

    def enforcer(self, session_id: str, tracker: CallTracker, recorder: Recorder) -> Enforcer:
        found = self._enforcers.get(session_id)
        if found is not None and found.tracker is tracker:
            self._enforcers.move_to_end(session_id)
            return found
        if found is not None:  # the tracker was evicted and remade: start over with it
            self._retire(found)
        enforcer = self._make(tracker, recorder)
        enforcer.start(self._notifier(session_id))
        self._enforcers[session_id] = enforcer
        while len(self._enforcers) > self._max_sessions:
            self._retire(self._enforcers.popitem(last=False)[1])
        return enforcer

    def _notifier(self, session_id: str) -> Callable[[bytes], Awaitable[None]]:
        async def send(message: bytes) -> None:
            await self.streams.notify(session_id, message)

        return send

    def _retire(self, enforcer: Enforcer) -> None:
        task = asyncio.get_running_loop().create_task(enforcer.stop())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def end_session(self, session_id: str) -> None:
        """The client deleted its session: stop its held calls and poller."""
        enforcer = self._enforcers.pop(session_id, None)
        if enforcer is not None:
            self._retire(enforcer)
        self.streams.forget(session_id)

    async def close(self) -> None:
        enforcers = list(self._enforcers.values())
        self._enforcers.clear()
        await asyncio.gather(*(e.stop() for e in enforcers), *self._closing, return_exceptions=True)
        await self.client.close()

