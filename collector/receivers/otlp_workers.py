"""OTLP/HTTP in worker processes (``otlp_processes`` >= 1): the daemon's side.

Receiving, decoding and normalising took about a third of the daemon's interpreter, which the
detectors need (issue #4). Here the daemon binds the listening socket itself (so ``bound_port``,
the loopback rule and TLS settings work as for the in-process receiver), starts N workers with
the ``spawn`` context (the daemon has threads: never fork it) and hands each the listening socket
(multiprocessing's socket reduction: the descriptor itself, passed at exec) and one end of a Unix
socket pair. Every worker accepts on the same socket; ``otlp_worker_main`` is the worker's side.

Per worker, one asyncio reader here turns each INGEST frame into ``Ingest.consume`` (so metrics,
event-time verdicts, admission and partial success are those of the in-process path) and answers
with the outcome; REJECTED frames count the worker's own refusals. The queue's depth is shared
(a ``RawValue`` updated on every submit and take), and so is whether the pipeline runs, so a
worker refuses a request that cannot fit before it normalises it exactly when ``Ingest.__call__``
would (429); while the pipeline is stopped (starting, draining) the daemon answers 503 instead.

A worker that dies is logged and restarted (requests it had in flight see a connection error and
are retried by exporters). ``shutdown`` drains: workers stop accepting, finish what is in flight
(the daemon still answers) and exit; a worker still starting then (a restart, a cancelled start) is
killed. A worker whose daemon is gone (even SIGKILLed) reads EOF and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

from ..metrics import Metrics
from . import Ingest, NetworkReceiver, Overloaded, Unavailable
from . import worker_frames as wf
from .otlp_grpc import NAME as GRPC_NAME
from .otlp_http import NAME as HTTP_NAME
from .otlp_worker_main import main as worker_main
from .otlp_worker_main import read_frame
from .tls import TlsFiles

log = logging.getLogger("toolwatch.receiver.otlp_workers")

REPLY_TIMEOUT_S = 10.0
"""How long a worker waits for the daemon's answer to a request before it answers 503."""
_WRITE_HIGH_WATER = 1 << 20
"""Bytes of replies buffered for a worker before the reader waits for them to drain."""


def bind_listener(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket on ``host:port`` (the first address ``host`` resolves to)."""
    return _bound(HTTP_NAME, host, port, reuse_port=False, backlog=backlog)


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT`` and never listening: OTLP/gRPC workers bind
    the same port beside it (gRPC's server sets ``SO_REUSEPORT`` too). Binding it here resolves port
    0 and reports a port in use at the daemon's start, as ``bind_listener`` does for OTLP/HTTP, and it
    holds the port while a worker restarts. A socket that does not listen is given no connections.

    ``SO_REUSEPORT`` would also let another process of this user that set it (a second toolwatch's
    gRPC workers) share the port, the kernel splitting the exporters' connections, and so their
    agents' baselines, between the two without a word. So the port is probed once bound: if
    anything accepts a connection there, the start fails instead."""
    sock = _bound(GRPC_NAME, host, port, reuse_port=True, backlog=None)
    try:
        _nobody_listens(sock, host)
    except BaseException:
        sock.close()
        raise
    return sock


def _nobody_listens(sock: socket.socket, host: str) -> None:
    addr = sock.getsockname()
    target = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(addr[0], addr[0])  # a wildcard: probe loopback
    try:
        probe = socket.create_connection((target, addr[1]), timeout=2.0)
    except OSError:
        return  # refused (or unreachable): nobody listens, the port is ours
    probe.close()
    raise OSError(f"{GRPC_NAME}: cannot listen on {host}:{addr[1]}: another process already listens there "
                  f"(a second toolwatch? set {GRPC_NAME} to a free port, or off)")


def _bound(setting: str, host: str, port: int, *, reuse_port: bool, backlog: int | None) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    if not infos:
        raise OSError(f"{setting}: {host!r} resolves to no address")
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        # The reservation shares only with SO_REUSEPORT sockets of this user (the workers'): with
        # SO_REUSEADDR as well, any server setting SO_REUSEADDR could bind and listen beside it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT if reuse_port else socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            raise OSError(f"{setting}: cannot listen on {host}:{port}: {exc.strerror} "
                          f"(is the port in use? set {setting} to a free port, or off)") from None
        if backlog is not None:
            sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def start_worker(ctx: Any, args: Callable[[socket.socket], tuple[Any, ...]], target: Callable[..., None], name: str,
                 guard: Callable[[], ContextManager[None]]) -> tuple[Any, socket.socket]:
    """Start a worker process with one end of a new Unix socket pair (``args(child_end)`` are its
    arguments), inside ``guard`` (cpu_affinity's ``released``); the process and the daemon's end.
    The child's end is closed here, so the worker's death reads as EOF on the daemon's end."""
    parent, child = socket.socketpair()
    proc = ctx.Process(target=target, args=args(child), name=name, daemon=True)
    try:
        with guard():
            proc.start()
    except BaseException:
        parent.close()
        raise
    finally:
        child.close()
    return proc, parent


@dataclass
class _Worker:
    slot: int
    proc: Any  # multiprocessing.Process of the spawn context
    writer: asyncio.StreamWriter
    reader: asyncio.StreamReader
    started: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    mirror: wf.TableMirror = field(default_factory=wf.TableMirror)
    """The daemon's side of the worker's value table (worker_frames.ValueTable): per connection."""


class OtlpWorkers(NetworkReceiver):
    """An OTLP receiver served by ``processes`` worker processes (``OtlpHttpWorkers``, ``OtlpGrpcWorkers``)."""

    protocol = ""
    """How the log names the receiver."""

    def __init__(
        self,
        host: str,
        port: int,
        ingest: Ingest,
        metrics: Metrics,
        *,
        processes: int,
        fingerprint_key: str,
        max_body_bytes: int,
        retry_after_s: int = 2,
        bearer_token: str = "",
        tls: TlsFiles | None = None,
        reply_timeout_s: float | None = None,
        start_timeout_s: float = 60.0,
        restart_delay_s: float = 1.0,
        spawn_guard: Callable[[], ContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        super().__init__(
            host, port, ingest, metrics,
            max_body_bytes=max_body_bytes, retry_after_s=retry_after_s, bearer_token=bearer_token, tls=tls,
        )  # fmt: skip
        self.processes = processes
        self._key = fingerprint_key
        self.reply_timeout_s = REPLY_TIMEOUT_S if reply_timeout_s is None else reply_timeout_s
        """How long a worker waits for the daemon's answer before it answers 503 (a stalled daemon)."""
        self.start_timeout_s = start_timeout_s
        self.restart_delay_s = restart_delay_s
        """Least time between a worker's start and its replacement's (no tight loop of crashes)."""
        self._spawn_guard = spawn_guard
        """Entered around each worker's start: the daemon's ``ThreadAffinity.released`` (cpu_affinity)."""
        self._ctx = mp.get_context("spawn")
        self._sock: socket.socket | None = None
        self._depth: Any = None
        self._running: Any = None
        self._behind: Any = None
        self._workers: dict[int, _Worker] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.restarts = 0
        self._canon = wf.Canon()
        """Equal agents, tools, sessions... of all workers' requests as one object each (worker_frames.Canon)."""

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids, by slot."""
        return [self._workers[s].proc.pid for s in sorted(self._workers)]

    async def start(self) -> None:
        if self._sock is not None:
            return
        self._closing = False
        self._sock = self._bind()
        pipeline = self.ingest.pipeline
        self._depth = self._ctx.RawValue("q", pipeline.depth)
        self._running = self._ctx.RawValue("b", pipeline.running)
        self._behind = self._ctx.RawValue("b", pipeline.behind())
        pipeline.depth_listeners.append(self._share_depth)
        pipeline.running_listeners.append(self._share_running)
        try:
            await asyncio.gather(*(self._spawn(slot) for slot in range(self.processes)))
        except BaseException:
            await self.shutdown()
            raise
        self.bound_port = self._sock.getsockname()[1]
        log.info("%s receiver on %s in %d worker processes (pids %s)", self.protocol, self._where(), self.processes,
                 self.pids)

    def _bind(self) -> socket.socket:
        """The daemon's socket on ``host:port``, held until ``shutdown``."""
        raise NotImplementedError

    def _listen_arg(self) -> Any:
        """What a worker is handed to listen on (``otlp_worker_main.main``'s ``listen``)."""
        raise NotImplementedError

    def _where(self) -> str:
        return f"{self.host}:{self.bound_port}{' (TLS)' if self.tls else ''}"

    def _share_depth(self, depth: int, behind: bool) -> None:
        self._depth.value = depth
        self._behind.value = behind

    def _share_running(self, running: bool) -> None:
        self._running.value = running

    async def _spawn(self, slot: int) -> None:
        """Start the worker of ``slot`` and wait until it accepts connections."""
        assert self._sock is not None
        level = logging.getLogger().getEffectiveLevel()
        listen = self._listen_arg()
        proc, parent = start_worker(
            self._ctx, lambda child: (self.name, listen, child, self._depth, self._running, self._behind, level),
            worker_main, f"toolwatch-{self.name.replace('_', '-')}-{slot}", self._spawn_guard,
        )  # fmt: skip
        try:
            reader, writer = await asyncio.open_unix_connection(sock=parent)
        except BaseException:
            parent.close()
            self._abandon(proc)
            raise
        writer.write(wf.frame((
            wf.CONFIG, self._key, self.bearer_token, self.max_body_bytes, self.retry_after_s,
            self.tls.cert_file if self.tls else "", self.tls.key_file if self.tls else "",
            self.reply_timeout_s, self.ingest.pipeline.queue_max,
        )))  # fmt: skip
        try:
            msg = await asyncio.wait_for(read_frame(reader), self.start_timeout_s)
        except asyncio.TimeoutError:
            msg = None
        except BaseException:  # cancelled (shutdown during a restart, a cancelled start): not left running
            writer.close()
            self._abandon(proc)
            raise
        if msg is None or msg[0] != wf.READY:
            writer.close()
            proc.kill()
            await asyncio.to_thread(proc.join, 5)
            raise RuntimeError(
                f"OTLP worker process {proc.pid} did not start within {self.start_timeout_s:g} s "
                f"(exit code {proc.exitcode}); see its log lines above"
            )
        worker = _Worker(slot, proc, writer, reader)
        self._workers[slot] = worker
        worker.task = asyncio.create_task(self._serve(worker), name=f"{self.name}-worker-{slot}")
        if self._closing:
            writer.write(wf.frame((wf.STOP,)))

    @staticmethod
    def _abandon(proc: Any) -> None:
        """Kill a worker that was started but is not served (its start was cancelled) and reap it.

        Left alone, it went on accepting on its copy of the listening socket after the daemon
        closed its own, and its requests waited for answers no one would send. Killed and joined
        here, at once: a cancelled task cannot reliably wait in a thread, and a killed process is
        gone within milliseconds."""
        proc.kill()
        proc.join(5)

    async def _serve(self, worker: _Worker) -> None:
        """Answer one worker's frames until it exits; then restart it unless shutting down."""
        reader, writer = worker.reader, worker.writer
        try:
            while True:
                msg = await read_frame(reader)
                if msg is None:
                    break
                kind = msg[0]
                if kind == wf.INGEST:
                    writer.write(self._consume(msg, worker.mirror))
                    transport = writer.transport
                    if transport.get_write_buffer_size() > _WRITE_HIGH_WATER:
                        await writer.drain()
                elif kind == wf.REJECTED:
                    self.metrics.requests_rejected.labels(msg[1], msg[2]).inc()
        except (ConnectionError, OSError):
            pass
        except Exception:  # an unreadable frame: the worker is broken; it is replaced like a dead one
            log.exception("OTLP worker process %d sent an unreadable frame; stopping it", worker.proc.pid)
            worker.proc.kill()
        finally:
            writer.close()
        await asyncio.to_thread(worker.proc.join, 5)
        if worker.proc.is_alive():
            worker.proc.kill()
            await asyncio.to_thread(worker.proc.join, 5)
        code = worker.proc.exitcode
        if self._workers.get(worker.slot) is worker:
            del self._workers[worker.slot]
        if self._closing:
            log.info("OTLP worker process %d stopped (exit code %s)", worker.proc.pid, code)
            return
        log.warning(
            "OTLP worker process %d (slot %d) exited unexpectedly with code %s; requests it had in flight got a "
            "connection error (exporters retry them); starting a new one", worker.proc.pid, worker.slot, code,
        )  # fmt: skip
        self._respawn_later(worker)

    def _respawn_later(self, worker: _Worker) -> None:
        async def respawn() -> None:
            await asyncio.sleep(max(0.0, worker.started + self.restart_delay_s - time.monotonic()))
            while not self._closing:
                try:
                    await self._spawn(worker.slot)
                    self.restarts += 1
                    return
                except Exception:
                    log.exception("OTLP worker process for slot %d could not be restarted; retrying", worker.slot)
                    await asyncio.sleep(self.restart_delay_s)

        task = asyncio.create_task(respawn(), name=f"{self.name}-worker-{worker.slot}-restart")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _consume(self, msg: tuple[Any, ...], mirror: wf.TableMirror | None = None) -> bytes:
        """``Ingest.consume`` of one INGEST frame; the REPLY frame.

        ``OutOfStep`` (the frame's value-table slots do not follow ``mirror``) is raised: every later
        frame of that worker would be misread, so it is stopped and replaced like a broken one."""
        request_id = msg[1]
        try:
            _, receiver, norm, decode_rejected, decode_errors = wf.read_ingest(msg, self._canon, mirror)
            result = self.ingest.consume(receiver, norm, decode_rejected, decode_errors)
        except wf.OutOfStep:
            raise
        except Overloaded as exc:
            return wf.frame((wf.REPLY, request_id, wf.OVERLOADED, 0, 0, str(exc)))
        except Unavailable as exc:
            return wf.frame((wf.REPLY, request_id, wf.UNAVAILABLE, 0, 0, str(exc)))
        except Exception as exc:  # a frame we cannot read must not end the worker's connection
            log.exception("OTLP worker frame could not be admitted")
            return wf.frame((wf.REPLY, request_id, wf.UNAVAILABLE, 0, 0, f"internal error: {type(exc).__name__}"))
        return wf.frame((wf.REPLY, request_id, wf.OK, result.spans, result.rejected, result.message))

    async def shutdown(self) -> None:
        """Workers stop accepting, finish their requests in flight (answered here) and exit."""
        self._closing = True
        restarting = list(self._tasks)
        for task in restarting:
            task.cancel()
        if restarting:  # a restart in progress kills the worker it started (see _spawn)
            await asyncio.wait(restarting)
        for worker in list(self._workers.values()):
            if not worker.writer.is_closing():
                worker.writer.write(wf.frame((wf.STOP,)))
        tasks = [w.task for w in self._workers.values() if w.task is not None]
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=self.reply_timeout_s + 10)
            for worker in list(self._workers.values()):
                if worker.task in pending:
                    log.warning("OTLP worker process %d did not stop; killing it", worker.proc.pid)
                    worker.proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=10)
        self._workers.clear()
        if self._share_depth in self.ingest.pipeline.depth_listeners:
            self.ingest.pipeline.depth_listeners.remove(self._share_depth)
        if self._share_running in self.ingest.pipeline.running_listeners:
            self.ingest.pipeline.running_listeners.remove(self._share_running)
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


class OtlpHttpWorkers(OtlpWorkers):
    """The OTLP/HTTP receiver, served by ``processes`` worker processes accepting on the daemon's socket."""

    name = HTTP_NAME
    protocol = "OTLP/HTTP"

    def _bind(self) -> socket.socket:
        return bind_listener(self.host, self.port)

    def _listen_arg(self) -> Any:
        return self._sock

    def _where(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.bound_port}/v1/traces"


class OtlpGrpcWorkers(OtlpWorkers):
    """The OTLP/gRPC receiver, served by ``processes`` worker processes on the port the daemon reserved."""

    name = GRPC_NAME
    protocol = "OTLP/gRPC"

    def _bind(self) -> socket.socket:
        return reserve_port(self.host, self.port)

    def _listen_arg(self) -> Any:
        assert self._sock is not None
        return (self.host, self._sock.getsockname()[1])
