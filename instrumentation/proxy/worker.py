"""The HTTP proxy's span work in one worker process: the proxy forwards bytes, the worker builds spans.

Why: parsing, redaction, the injection scan, span building and OTLP encoding cost about as much
CPU per call as forwarding does (issue #3); in the proxy's only process the next request waited
behind them. Here the proxy's event loop only frames each observed message (length-prefixed, no
parsing) onto the worker's stdin; the worker replays the frames through the same ``CallTracker``
per ``Mcp-Session-Id`` (``SessionTrackers``) and exports over OTLP, so spans are the same as
in-process. The worker acknowledges with its counters on stdout (a JSON line now and then).

Bounded like ``Recorder``: at most ``max_queue`` frames may be unacknowledged; further ones are
dropped and counted in ``ProxyStats.dropped_observations``. A worker that dies is restarted (one
line on stderr) and the frames it had not acknowledged are counted as dropped. ``close`` ends the
worker's input; the worker observes what is left, flushes its exporter and exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import struct
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from .framing import Oversized
from .tracker import Direction, ProxyStats, SessionTrackers

HEADER = struct.Struct("<IBqqH")
"""Frame header: length of the rest of the frame, kind, time (ns), oversized size (-1: not), session id length."""
KIND_C2S, KIND_S2C, KIND_DELETE, KIND_FAIL = 1, 2, 3, 4
_KIND = {"c2s": KIND_C2S, "s2c": KIND_S2C}
_DIRECTION: dict[int, Direction] = {KIND_C2S: "c2s", KIND_S2C: "s2c"}
_COUNTERS = ("messages", "invalid_json", "oversized")
FLUSH_DELAY = 0.02
"""Longest a frame waits for the hot exchanges to end before it is handed to the worker anyway."""
MAX_RESTART_DELAY = 30.0
NICE = 10
"""The worker's niceness: on a busy machine, span work yields the CPU to forwarding (and to the peers)."""
MAX_QUEUE, RESTART_DELAY, CLOSE_TIMEOUT = 10_000, 0.5, 30.0


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What the worker needs to build the same spans as the proxy would: no secrets (the key comes from the env)."""

    agent_id: str
    agent_name: str = ""
    server_name: str = ""
    server_address: str = ""
    server_port: int = 0
    max_sessions: int = 1024
    service_name: str = "toolwatch-proxy"
    otlp_endpoint: str | None = None


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """The span worker's settings that are not the proxy's own: ``HttpProxy`` adds the agent and server
    fields it has to build the ``WorkerConfig``."""

    service_name: str = "toolwatch-proxy"
    otlp_endpoint: str | None = None
    max_queue: int = MAX_QUEUE
    restart_delay: float = RESTART_DELAY
    close_timeout: float = CLOSE_TIMEOUT


def frame_head(kind: int, session_id: str, t_ns: int, payload_len: int, size: int = -1) -> bytes:
    """A frame up to its payload (the proxy side); the header's length counts everything after its own 4 bytes."""
    sid = session_id.encode("utf-8", "surrogateescape")  # header values are decoded that way (listener.py)
    return HEADER.pack(HEADER.size - 4 + len(sid) + payload_len, kind, t_ns, size, len(sid)) + sid


@dataclass(slots=True)
class SessionRef:
    """What the proxy keeps of a session in worker mode: its id (the tracker lives in the worker)."""

    session_id: str


class SpanWorker:
    """The proxy's side: a ``Recorder`` look-alike (``submit``/``hold``/``release``/``flush``) that feeds the worker."""

    def __init__(self, config: WorkerConfig, stats: ProxyStats, *, max_queue: int = MAX_QUEUE,
                 restart_delay: float = RESTART_DELAY, close_timeout: float = CLOSE_TIMEOUT) -> None:
        self.config = config
        self.stats = stats
        self._max_queue = max_queue
        self._restart_delay = restart_delay
        self._close_timeout = close_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._out: list[bytes] = []
        """Frames not handed over yet: each frame's head, then its payload as submitted (joined in ``_flush``)."""
        self._flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._hot = 0
        self._sent = 0
        """Frames handed to the current worker."""
        self._acked: dict[str, Any] = {}
        """The current worker's last acknowledgement (its cumulative counters)."""
        self._closing = False
        self._delay = restart_delay
        self.restarts = 0
        self.pid: int | None = None

    @property
    def running(self) -> bool:
        """A worker process is there to take frames (not while one is being restarted)."""
        return self._proc is not None

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Spawn the worker process (its imports happen in the background; frames wait in the pipe)."""
        code = ("import sys; sys.path[:0] = __import__('json').loads(sys.argv[1]); "
                "from toolwatch.instrumentation.proxy.worker import main; main(sys.argv[2])")
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, json.dumps(sys.path), json.dumps(asdict(self.config)),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 20)
        self.pid = self._proc.pid
        self._sent, self._acked = 0, {}
        self._reader = asyncio.create_task(self._read_acks(self._proc))

    async def close(self) -> None:
        """Hand over what is queued, end the worker's input and wait until it has exported and exited."""
        self._closing = True
        proc = self._proc
        if proc is None:  # never started, or waiting to restart one
            if self._reader is not None:
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)
            return
        self._flush()
        assert proc.stdin is not None
        try:
            proc.stdin.close()
            await proc.stdin.wait_closed()
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            await asyncio.wait_for(proc.wait(), self._close_timeout)
        except asyncio.TimeoutError:
            print(f"toolwatch proxy: span worker {proc.pid} did not finish within {self._close_timeout:g}s; "
                  "killing it", file=sys.stderr, flush=True)
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            await self._reader
        self._proc = None

    async def _read_acks(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError):
                continue
            if not line:
                break
            try:
                ack = json.loads(line)
            except ValueError:
                continue
            self._account(ack)
        code = await proc.wait()
        if self._closing:
            lost = self._sent - self._acked.get("done", 0)
            if code != 0 or lost:
                self.stats.dropped_observations += lost
                print(f"toolwatch proxy: span worker exited with code {code} at shutdown; "
                      f"{lost} observations dropped", file=sys.stderr, flush=True)
            return
        lost = self._sent - self._acked.get("done", 0)
        self.stats.dropped_observations += lost
        self._proc, self._out = None, []
        # a worker that never acknowledged anything (e.g. cannot start) is retried less and less often
        self._delay = self._restart_delay if self._acked else min(self._delay * 2, MAX_RESTART_DELAY)
        print(f"toolwatch proxy: span worker {proc.pid} exited unexpectedly (code {code}); {lost} observations "
              f"dropped; restarting it in {self._delay:g}s", file=sys.stderr, flush=True)
        await asyncio.sleep(self._delay)
        if not self._closing:
            self.restarts += 1
            try:
                await self.start()
            except OSError as exc:  # keep forwarding without spans rather than take the proxy down
                print(f"toolwatch proxy: cannot restart the span worker ({exc}); observations are dropped from now on",
                      file=sys.stderr, flush=True)

    def _account(self, ack: dict[str, Any]) -> None:
        """Add what the worker counted since its last acknowledgement to the proxy's stats."""
        last = self._acked
        for name in _COUNTERS:
            table, before = getattr(self.stats, name), last.get(name, {})
            for direction, value in ack.get(name, {}).items():
                table[direction] += value - before.get(direction, 0)
        self.stats.spans += ack.get("spans", 0) - last.get("spans", 0)
        self.stats.dropped_pending += ack.get("dropped_pending", 0) - last.get("dropped_pending", 0)
        self._acked = ack

    # -- the hot path ---------------------------------------------------------------------------
    def _admit(self) -> bool:
        if self._proc is None or self._sent - self._acked.get("done", 0) >= self._max_queue:
            self.stats.dropped_observations += 1
            return False
        self._sent += 1
        return True

    def submit(self, tracker: SessionRef, direction: Direction, raw: bytes | Oversized, t_ns: int) -> None:
        """Called right after a message was forwarded: frame it, never parse, never block.

        ``tracker``: what ``HttpProxy`` has of a session in worker mode (the tracker is the worker's).
        """
        if not self._admit():
            return
        if isinstance(raw, Oversized):
            self._queue(_KIND[direction], tracker.session_id, t_ns, raw.head, raw.size)
        else:
            self._queue(_KIND[direction], tracker.session_id, t_ns, raw)

    def delete(self, session_id: str) -> None:
        """The client ended the session (HTTP DELETE): the worker forgets its tracker."""
        if self._admit():
            self._queue(KIND_DELETE, session_id, 0, b"")

    def fail(self, session_id: str, request_ids: list[Any], error_type: str, t_ns: int) -> None:
        """Close the spans of those of ``request_ids`` still unanswered (the upstream broke off)."""
        if self._admit():
            payload = json.dumps({"ids": request_ids, "error_type": error_type}).encode()
            self._queue(KIND_FAIL, session_id, t_ns, payload)

    def _queue(self, kind: int, session_id: str, t_ns: int, payload: bytes, size: int = -1) -> None:
        """Queue one frame. Its payload is not copied here (only a buffer the caller could still change
        is): the join in ``_flush`` is its one copy before the pipe."""
        self._out += (frame_head(kind, session_id, t_ns, len(payload), size),
                      payload if type(payload) is bytes else bytes(payload))
        self._schedule()

    def _schedule(self) -> None:
        """Hand frames over when no exchange is on its hot path (``release``), else within ``FLUSH_DELAY``.

        Waking the worker mid-exchange would have it compete for the CPU with the exchange.
        """
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_soon(self._flush) if not self._hot else loop.call_later(
                FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        """One write per batch, its frames joined; the pipe transport buffers what the kernel does not take yet.

        Joined into ``bytes``, not written as a buffer object: uvloop takes bytes on its fast path.
        """
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._out:
            return
        data, self._out = b"".join(self._out), []
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            return  # counted when the worker's exit is noticed
        proc.stdin.write(data)

    def hold(self) -> None:
        """An exchange entered its hot path: frames wait for ``release`` (or ``FLUSH_DELAY``)."""
        self._hot += 1

    def release(self) -> None:
        """An exchange left its hot path; the last one out hands the frames over."""
        self._hot = max(0, self._hot - 1)
        if not self._hot and self._out:
            self._flush()

    def flush(self) -> None:
        """Frames are handed over in order; the worker observes them in order."""


# -- the worker process ---------------------------------------------------------------------------
def main(config_json: str) -> None:
    """Read frames from stdin until EOF, observe them, export spans; acknowledge on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the proxy stops us via EOF
    try:
        os.nice(NICE)
    except OSError:
        pass
    config = WorkerConfig(**json.loads(config_json))
    from ..mcp_client import TRACER_NAME, default_redactor, setup_tracing

    provider = setup_tracing(config.service_name, endpoint=config.otlp_endpoint)
    stats = ProxyStats()
    sessions = SessionTrackers(
        provider.get_tracer(TRACER_NAME), default_redactor(), stats, agent_id=config.agent_id,
        agent_name=config.agent_name, server_name=config.server_name, server_address=config.server_address,
        server_port=config.server_port, max_sessions=config.max_sessions)
    fd, out = sys.stdin.fileno(), sys.stdout
    done = 0

    def ack() -> None:
        try:
            out.write(json.dumps({"done": done, "messages": stats.messages, "invalid_json": stats.invalid_json,
                                  "oversized": stats.oversized, "spans": stats.spans,
                                  "dropped_pending": stats.dropped_pending}) + "\n")
            out.flush()
        except OSError:  # the proxy is gone (killed): still export what was observed
            pass

    buf = bytearray()
    acked_at, dirty = time.monotonic(), False
    while True:
        if dirty and not select.select([fd], [], [], 0.02)[0]:
            ack()  # idle: tell the proxy where we are
            acked_at, dirty = time.monotonic(), False
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        buf += chunk
        frames, used = decode(buf)
        del buf[:used]
        for frame in frames:
            done += 1
            try:
                observe(sessions, *frame)
            except Exception as exc:  # a bug here must never stop the worker
                print(f"toolwatch proxy: could not record a message: {exc!r}", file=sys.stderr, flush=True)
        dirty = True
        if time.monotonic() - acked_at > 0.05:
            ack()
            acked_at, dirty = time.monotonic(), False
    ack()
    provider.shutdown()


def decode(buf: bytes | bytearray) -> tuple[list[tuple[int, str, int, int, bytes]], int]:
    """The complete frames at the start of ``buf`` (kind, session id, time, size, payload) and the bytes they take."""
    frames = []
    pos = 0
    while len(buf) - pos >= HEADER.size:
        length, kind, t_ns, size, sid_len = HEADER.unpack_from(buf, pos)
        end = pos + 4 + length
        if end > len(buf):
            break
        start = pos + HEADER.size
        frames.append((kind, bytes(buf[start:start + sid_len]).decode("utf-8", "surrogateescape"), t_ns, size, bytes(buf[start + sid_len:end])))
        pos = end
    return frames, pos


def observe(sessions: SessionTrackers, kind: int, session_id: str, t_ns: int, size: int, payload: bytes) -> None:
    """Replay one frame on the session's tracker, as ``Recorder`` would have in the proxy."""
    if kind == KIND_DELETE:
        sessions.forget(session_id)
        return
    tracker = sessions.get(session_id)
    if kind == KIND_FAIL:
        fail = json.loads(payload)
        tracker.fail_requests(fail["ids"], fail["error_type"], now_ns=t_ns)
        return
    tracker.observe(_DIRECTION[kind], payload if size < 0 else Oversized(payload, size), t_ns)
