"""A Kafka decode worker process (``kafka.decode_processes`` >= 1): decode and normalise records.

Started by ``decode_workers.DecodeWorkers`` with the ``spawn`` context. It reads its settings (the
fingerprint key among them: never argv or environment) as the first frame of its Unix socket,
answers READY, then takes one DECODE frame at a time: the values of a run of Kafka records, in
partition order. Each value is decoded as the receiver would (``kafka_records.decode_record``) and
normalised with a ``Normalizer`` built from the daemon's key, and the whole run goes back as one
RESULTS frame: per record an INGEST message (``worker_frames.ingest_message``, values sent once per
connection through its ``ValueTable``), a DEAD item (the reason and message of its dead letter), or
a FAILED item (an unexpected error: the daemon decodes that record itself).

A thread reads the daemon's requests as they come, so the daemon can send the next run while this
process still decodes (or writes the answer to) the last one: neither side can wait on the other
with both buffers full.
It ignores SIGINT and SIGTERM: the daemon decides when it stops (STOP, or EOF on the socket, also
after a SIGKILL of the daemon).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import sys
import threading
from typing import Any, BinaryIO

from toolwatch.instrumentation.fingerprint import key_from_text
from toolwatch.instrumentation.redact import Redactor

from .. import otlp
from ..normalize import Normalizer
from . import worker_frames as wf
from .kafka_records import decode_record

log = logging.getLogger("toolwatch.receiver.kafka_decode_worker")

RECEIVER = "kafka"
# Kinds, daemon -> worker (CONFIG, STOP: worker_frames)
DECODE = 20
"""(DECODE, record values): decode and normalise these, in order."""
# Kinds, worker -> daemon (READY: worker_frames)
RESULTS = 21
"""(RESULTS, items): one item per value of the DECODE answered, in its order."""
# Items of a RESULTS frame besides INGEST messages
DEAD = 22
"""(DEAD, reason, message): the value does not decode; it goes to the dead letter."""
FAILED = 23
"""(FAILED, message): an unexpected error; the daemon decodes the value itself."""


def read_frame(stream: BinaryIO) -> tuple[Any, ...] | None:
    """The next message of a blocking stream, or None at EOF (also the daemon side's reader)."""
    header = stream.read(wf.HEADER.size)
    if len(header) < wf.HEADER.size:
        return None
    size = wf.HEADER.unpack(header)[0]
    body = stream.read(size)
    if len(body) < size:
        return None
    return wf.unframe(body)


def decode_run(values: list[Any], encoding: str, max_bytes: int, normalizer: Normalizer,
               table: wf.ValueTable) -> list[tuple[Any, ...]]:
    """The RESULTS items of one DECODE: per value an INGEST message, a DEAD or a FAILED item."""
    items: list[tuple[Any, ...]] = []
    for i, value in enumerate(values):
        try:
            req = decode_record(value, encoding, max_bytes, attr_map=True)
        except otlp.DecodeError as exc:
            items.append((DEAD, exc.reason, str(exc)))
            continue
        except Exception as exc:  # not a DecodeError: the daemon's own decode reports it as it would
            items.append((FAILED, f"{type(exc).__name__}: {exc}"))
            continue
        try:
            norm = normalizer.normalize(req)
            items.append(wf.ingest_message(i, RECEIVER, norm, 0, (), rows=True, table=table))
        except Exception as exc:
            items.append((FAILED, f"{type(exc).__name__}: {exc}"))
    return items


def serve(conn: socket.socket) -> None:
    """Answer DECODE frames until STOP or EOF."""
    stream = conn.makefile("rb")
    settings = read_frame(stream)
    if settings is None or settings[0] != wf.CONFIG:
        return  # the daemon went away before configuring us
    _, key_text, encoding, max_bytes = settings
    # Rows, not ToolCalls: the values only travel on as columns (worker_frames.rows_to_columns).
    normalizer = Normalizer(Redactor(key_from_text(key_text)).redact_json_text, rows=True)
    del key_text, settings
    table = wf.ValueTable()
    requests: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
    threading.Thread(target=_read_requests, args=(stream, requests), name="requests", daemon=True).start()
    conn.sendall(wf.frame((wf.READY, os.getpid())))
    while True:
        msg = requests.get()
        if msg is None or msg[0] == wf.STOP:
            return
        if msg[0] != DECODE:
            raise ValueError(f"unexpected frame kind {msg[0]!r} from the daemon")
        items = decode_run(msg[1], encoding, max_bytes, normalizer, table)
        try:
            out = wf.frame((RESULTS, items))
        except BaseException:
            table.forget()  # not sent: the daemon's mirror must not miss the values it defined
            raise
        conn.sendall(out)


def _read_requests(stream: BinaryIO, requests: "queue.SimpleQueue[tuple[Any, ...] | None]") -> None:
    """Read the daemon's frames as they come (None at EOF or on an unreadable frame): the daemon may
    send the next run while this process writes an answer, and must never find it not reading."""
    try:
        while True:
            msg = read_frame(stream)
            requests.put(msg)
            if msg is None or msg[0] == wf.STOP:
                return
    except OSError:  # the daemon is gone (a reset rather than EOF after a SIGKILL)
        requests.put(None)
    except Exception:
        log.exception("Kafka decode worker process %d read an unreadable frame; stopping", os.getpid())
        requests.put(None)


def main(conn: socket.socket, log_level: int) -> None:
    """The worker process's entry point (``multiprocessing`` target)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code = 0
    try:
        serve(conn)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon is gone
    except BaseException:
        log.exception("Kafka decode worker process %d failed", os.getpid())
        code = 1
    logging.shutdown()
    os._exit(code)  # nothing else to flush; skip multiprocessing's exit handlers (the parent may be gone)
