"""An OTLP worker process (``otlp_processes`` >= 1): receive, decode, normalise; the daemon admits.

Started by ``otlp_workers.OtlpHttpWorkers`` or ``OtlpGrpcWorkers`` with the ``spawn`` context.
An OTLP/HTTP worker accepts on the listening socket the daemon bound and handed over; an
OTLP/gRPC worker binds the port the daemon reserved, with ``SO_REUSEPORT``. Either answers
requests with the very handler of the in-process receiver (``otlp_http.OtlpHttpReceiver``: bearer
token, body limits, bounded gzip, protobuf and JSON, TLS; ``otlp_grpc.OtlpGrpcReceiver``: the same
for gRPC, with its status codes and RetryInfo), normalises with a ``Normalizer`` built from the
daemon's fingerprint key, and sends the result to the daemon as one frame (``worker_frames``) over
its Unix socket. The daemon runs ``Ingest.consume`` and answers; the worker then answers exactly as
the daemon would.

It ignores SIGINT and SIGTERM: the daemon decides when it stops (a STOP frame: stop accepting,
finish what is in flight) and when the daemon is gone (EOF on the socket, even after a SIGKILL),
the worker exits at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import sys
from typing import Any

from aiohttp import web

from toolwatch.event_loop import run
from toolwatch.instrumentation.fingerprint import key_from_text
from toolwatch.instrumentation.redact import Redactor

from .. import otlp
from ..normalize import Normalizer
from ..pipeline import full_for
from . import IngestResult, Overloaded, Unavailable, span_count
from . import worker_frames as wf
from .otlp_grpc import NAME as GRPC_NAME
from .otlp_grpc import OtlpGrpcReceiver
from .otlp_http import NAME as HTTP_NAME
from .otlp_http import OtlpHttpReceiver
from .tls import TlsFiles

log = logging.getLogger("toolwatch.receiver.otlp_worker")


class DaemonLink:
    """The worker's end of the Unix socket: frames out, replies matched to requests by id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply_timeout_s: float) -> None:
        self.reader, self.writer = reader, writer
        self.reply_timeout_s = reply_timeout_s
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[tuple[Any, ...]]] = {}
        self.stop = asyncio.Event()
        """Set by a STOP frame or when the daemon is gone (``gone``)."""
        self.gone = False
        self.table = wf.ValueTable()
        """This connection's values sent as slots (worker_frames.ValueTable): frames are built in
        ``ask`` and written at once, so the daemon reads them in the order they were built."""

    async def run(self) -> None:
        """Read replies until STOP or EOF; on EOF fail every request still waiting."""
        try:
            while True:
                msg = await read_frame(self.reader)
                if msg is None:
                    break
                if msg[0] == wf.REPLY:
                    fut = self._waiting.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                elif msg[0] == wf.STOP:
                    self.stop.set()
        finally:
            self.gone = True
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(Unavailable("the daemon closed the connection; retry later"))
            self._waiting.clear()
            self.stop.set()

    def send(self, data: bytes) -> None:
        if not self.gone:
            self.writer.write(data)

    async def ask(self, build: Any) -> tuple[Any, ...]:
        """Send the frame ``build(request_id)`` and wait for its REPLY (``Unavailable`` after the timeout)."""
        if self.gone:
            raise Unavailable("the daemon is shutting down; retry later")
        request_id = next(self._ids)
        fut: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = fut
        try:
            self.writer.write(build(request_id))
            await self.writer.drain()
            return await asyncio.wait_for(fut, self.reply_timeout_s)
        except asyncio.TimeoutError:
            raise Unavailable(f"the daemon did not answer within {self.reply_timeout_s:g} s; retry later") from None
        except (ConnectionError, OSError):
            raise Unavailable("the daemon closed the connection; retry later") from None
        finally:
            self._waiting.pop(request_id, None)


async def read_frame(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message, or None at EOF (also the daemon side's reader)."""
    try:
        header = await reader.readexactly(wf.HEADER.size)
        body = await reader.readexactly(wf.HEADER.unpack(header)[0])
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return wf.unframe(body)


class DaemonAdmitted:
    """Admission as a round trip to the daemon, for a receiver in a worker process (mixed in first).

    The refusal of a request that cannot fit is made here, before the request is normalised, as
    ``Ingest.__call__`` makes it in the daemon; the rest (counts, event time, the queue) the daemon
    does when it reads the INGEST frame."""

    name: str

    def attach(self, link: DaemonLink, normalizer: Normalizer, depth: Any, running: Any, queue_max: int,
               behind: Any) -> None:
        self.link, self.normalizer = link, normalizer
        self.depth, self.running, self.queue_max, self.behind = depth, running, queue_max, behind
        """The daemon's queue depth, whether its pipeline runs, its ``queue_max_spans``, and whether
        its queue is ``behind`` (shared values: ``Pipeline.full_for``'s refusal, made here)."""

    def _count_rejected(self, reason: str) -> None:
        self.link.send(wf.frame((wf.REJECTED, self.name, reason)))

    def _refuse(self, spans: int) -> None:
        """Ingest.__call__'s early refusal (Pipeline.full_for) of a request of ``spans`` spans, against
        the depth the daemon shares, and like it only while the pipeline runs: a stopped one
        (draining) is the daemon's 503."""
        depth, behind = self.depth.value, self.behind.value
        if self.running.value and (full_for(depth, spans, self.queue_max) or behind):
            self._count_rejected("queue_full")
            why = ("the oldest past pipeline.batch_max_delay_ms + queue_max_wait_ms" if behind
                   else f"of pipeline.queue_max_spans {self.queue_max}")
            raise Overloaded(f"pipeline queue is full ({depth} events waiting, {why}); retry later")

    def refuse_early(self) -> None:
        self._refuse(1)  # Ingest.refuse_early: before the body is decoded

    async def admit(self, decoded: otlp.Decoded) -> IngestResult:
        self._refuse(span_count(decoded.request))
        norm = self.normalizer.normalize(decoded.request)
        errors = tuple(decoded.errors)
        rows, name = self.normalizer.rows, self.name
        reply = await self.link.ask(lambda rid: wf.ingest_frame(
            rid, name, norm, decoded.rejected, errors, rows=rows, table=self.link.table
        ))
        _, _, outcome, spans, rejected, message = reply
        if outcome == wf.OVERLOADED:
            raise Overloaded(message)
        if outcome == wf.UNAVAILABLE:
            raise Unavailable(message)
        return IngestResult(spans, rejected, message)


class WorkerHttpReceiver(DaemonAdmitted, OtlpHttpReceiver):
    """``OtlpHttpReceiver`` accepting on the listening socket the daemon bound and handed over."""

    def __init__(self, sock: socket.socket, **kw: Any) -> None:
        host, port = sock.getsockname()[:2]
        super().__init__(host, port, None, None, **kw)  # type: ignore[arg-type]  # no Ingest or Metrics here
        self.sock = sock

    def _site(self, runner: web.AppRunner, ssl_context: Any) -> web.BaseSite:
        return web.SockSite(runner, self.sock, ssl_context=ssl_context)


class WorkerGrpcReceiver(DaemonAdmitted, OtlpGrpcReceiver):
    """``OtlpGrpcReceiver`` listening on the port the daemon reserved (``otlp_workers.reserve_port``).

    gRPC's server cannot adopt a socket, so each worker binds ``host:port`` itself with
    ``SO_REUSEPORT``, beside the daemon's bound (never listening) reservation and the other
    workers: the kernel spreads the connections over the workers."""

    server_options = (("grpc.so_reuseport", 1),)

    def __init__(self, address: tuple[str, int], **kw: Any) -> None:
        super().__init__(address[0], address[1], None, None, **kw)  # type: ignore[arg-type]  # no Ingest or Metrics here


PROTOCOLS = {HTTP_NAME: WorkerHttpReceiver, GRPC_NAME: WorkerGrpcReceiver}
"""The receiver a worker process runs, by the receiver name the daemon gives it."""


async def serve(protocol: str, listen: Any, conn_sock: socket.socket, depth: Any, running: Any, behind: Any) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=conn_sock)
    settings = await read_frame(reader)
    if settings is None or settings[0] != wf.CONFIG:
        return  # the daemon went away before configuring us
    _, key_text, token, max_body, retry_after, cert, key_file, reply_timeout, queue_max = settings
    # Rows, not ToolCalls: the values only travel on as columns (worker_frames.rows_to_columns).
    normalizer = Normalizer(Redactor(key_from_text(key_text)).redact_json_text, rows=True)
    del key_text
    link = DaemonLink(reader, writer, reply_timeout)
    receiver = PROTOCOLS[protocol](
        listen, max_body_bytes=max_body, retry_after_s=retry_after, bearer_token=token,
        tls=TlsFiles(cert, key_file) if cert else None,
    )  # fmt: skip
    receiver.attach(link, normalizer, depth, running, queue_max, behind)
    reading = asyncio.create_task(link.run())
    await receiver.start()
    link.send(wf.frame((wf.READY, os.getpid())))
    await link.stop.wait()
    if link.gone:
        return  # the daemon is gone: nobody is left to admit what is in flight
    # STOP: close the listening socket, let the requests in flight finish (the daemon still answers)
    await receiver.shutdown()
    writer.close()
    reading.cancel()


def main(protocol: str, listen: Any, conn_sock: socket.socket, depth: Any, running: Any, behind: Any,
         log_level: int) -> None:
    """The worker process's entry point (``multiprocessing`` target): ``protocol`` is the receiver's
    name (``PROTOCOLS``); ``listen`` the listening socket (OTLP/HTTP) or ``(host, port)`` (OTLP/gRPC)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The daemon logs the receiver's address once, with the workers' pids; each worker need not.
    for name in ("toolwatch.receiver.otlp_http", "toolwatch.receiver.otlp_grpc"):
        logging.getLogger(name).setLevel(max(log_level, logging.WARNING))
    code = 0
    try:
        run(serve(protocol, listen, conn_sock, depth, running, behind))  # on uvloop: every body in and frame out
    except BaseException:
        log.exception("OTLP worker process %d failed", os.getpid())
        code = 1
    logging.shutdown()
    os._exit(code)  # nothing else to flush; skip multiprocessing's exit handlers (the parent may be gone)
