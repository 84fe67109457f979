"""Kafka records decoded and normalised in worker processes (``kafka.decode_processes``): the daemon's side.

The Kafka receiver's consumer thread decoded and normalised every record itself, under the
daemon's interpreter lock: on fleet traffic that was a third of the daemon's interpreter, taken
from the detectors (issue #4). Here the consumer thread hands the values of each poll to N worker
processes (``decode_worker_main``), a contiguous run per worker so each partition's order is kept,
and rebuilds their answers as ``Normalized`` results with the daemon's ``Canon``, as the OTLP/HTTP
workers' calls are (worker_frames). Polling, offsets, commits, the dead letter and the changelog
stay with the consumer thread: a worker only turns bytes into calls.

Nothing is lost to a worker: a value it could not handle (FAILED), and every value of a run whose
worker died or sent an unreadable answer, comes back as ``None``, which the receiver decodes in its
own thread as it did before. A dead worker is logged and started again at a later ``decode`` (at
most once per ``restart_delay_s``); until then its runs are decoded in the consumer thread.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, NamedTuple

from ..normalize import Normalized
from . import worker_frames as wf
from .decode_worker_main import DEAD, DECODE, FAILED, RESULTS, read_frame
from .decode_worker_main import main as worker_main
from .otlp_workers import start_worker

log = logging.getLogger("toolwatch.receiver.kafka_decode")


class DeadValue(NamedTuple):
    """A value that does not decode: the reason and message of its dead letter."""

    reason: str
    message: str


Result = Normalized | DeadValue | None
"""Per value: its calls, its dead letter, or None (decode it in the caller's thread)."""


class Sent(NamedTuple):
    """Values handed to the workers (``DecodeWorkers.send``): how many, and the runs sent."""

    n: int
    runs: list[tuple[int, Any, int, int]]
    """(slot, its worker then, start, end) of each run sent."""


@dataclass
class _Worker:
    proc: Any  # multiprocessing.Process of the spawn context
    conn: socket.socket
    stream: Any  # conn.makefile("rb")
    mirror: wf.TableMirror


class DecodeWorkers:
    """``processes`` decode workers, used from one thread at a time (the Kafka consumer thread)."""

    def __init__(
        self,
        processes: int,
        *,
        fingerprint_key: str,
        encoding: str,
        max_record_bytes: int,
        spawn_guard: Callable[[], ContextManager[None]] = contextlib.nullcontext,
        start_timeout_s: float = 60.0,
        reply_timeout_s: float = 10.0,
        restart_delay_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if processes < 1:
            raise ValueError("DecodeWorkers needs at least one process (0 = decode in the consumer thread)")
        self.processes = processes
        self._key = fingerprint_key
        self.encoding = encoding
        self.max_record_bytes = max_record_bytes
        self._spawn_guard = spawn_guard
        """Entered around each worker's start: the daemon's ``ThreadAffinity.released`` (cpu_affinity)."""
        self.start_timeout_s = start_timeout_s
        self.reply_timeout_s = reply_timeout_s
        """How long a run may take a worker before it is taken for hung and replaced (its run decoded here)."""
        self.restart_delay_s = restart_delay_s
        self.clock = clock
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker | None] = [None] * processes
        self._retry_at = [0.0] * processes
        self._canon = wf.Canon()
        self.restarts = 0
        self.fallbacks = 0
        """Values handed back undecoded (decoded in the caller's thread)."""
        self._closed = False

    @property
    def pids(self) -> list[int | None]:
        return [w.proc.pid if w is not None else None for w in self._workers]

    def start(self) -> None:
        """Start every worker; one that does not start is logged and retried later (see ``send``)."""
        for slot in range(self.processes):
            self._start(slot, self.start_timeout_s)

    def _start(self, slot: int, timeout_s: float) -> bool:
        self._retry_at[slot] = self.clock() + self.restart_delay_s
        try:
            self._workers[slot] = self._spawn(slot, timeout_s)
            return True
        except Exception as exc:
            log.warning("Kafka decode worker %d did not start (%s); its records are decoded in the consumer "
                        "thread until it does", slot, exc)
            return False

    def _spawn(self, slot: int, timeout_s: float) -> _Worker:
        level = logging.getLogger().getEffectiveLevel()
        proc, parent = start_worker(self._ctx, lambda child: (child, level), worker_main,
                                    f"toolwatch-kafka-decode-{slot}", self._spawn_guard)
        stream = parent.makefile("rb")
        try:
            parent.sendall(wf.frame((wf.CONFIG, self._key, self.encoding, self.max_record_bytes)))
            parent.settimeout(timeout_s)
            msg = read_frame(stream)
            parent.settimeout(self.reply_timeout_s)
            if msg is None or msg[0] != wf.READY:
                raise RuntimeError(f"process {proc.pid} exited during start-up (exit code {proc.exitcode})")
        except BaseException:
            stream.close()
            parent.close()
            proc.kill()
            proc.join(5)
            raise
        log.info("Kafka decode worker %d: pid %d", slot, proc.pid)
        return _Worker(proc, parent, stream, wf.TableMirror())

    def decode(self, values: list[bytes | None]) -> list[Result]:
        """Each value decoded and normalised by the workers, in order (see ``Result``)."""
        return self.receive(self.send(values))

    def send(self, values: list[bytes | None]) -> "Sent":
        """Hand ``values`` to the workers; ``receive`` gives the results. Several may be in flight (the
        workers read requests as they come); receive them in the order sent."""
        if not values:
            return Sent(0, [])
        asked: list[tuple[int, Any, int, int]] = []
        for slot, (start, end) in enumerate(self._runs(values)):
            if start == end or not self._ready(slot):
                continue
            worker = self._workers[slot]
            assert worker is not None
            try:
                worker.conn.sendall(wf.frame((DECODE, values[start:end])))
            except OSError as exc:
                self._lost(slot, f"the connection broke ({exc})")
                continue
            asked.append((slot, worker, start, end))
        return Sent(len(values), asked)

    def receive(self, sent: "Sent") -> list[Result]:
        """The results of ``sent``, in the order of its values (None where the caller must decode)."""
        out: list[Result] = [None] * sent.n
        for slot, worker, start, end in sent.runs:
            if self._workers[slot] is not worker:  # stopped since (closed in between)
                continue
            try:
                msg = read_frame(worker.stream)
                if msg is None:
                    self._lost(slot, "it exited")
                    continue
                if msg[0] != RESULTS or len(msg[1]) != end - start:
                    raise ValueError(f"an answer of kind {msg[0]!r} for a run of {end - start} values")
                out[start:end] = [self._result(item, worker.mirror) for item in msg[1]]
            except TimeoutError:
                self._lost(slot, f"it did not answer within {self.reply_timeout_s:g} s")
            except (OSError, ValueError, TypeError, EOFError) as exc:
                self._lost(slot, f"it sent an unreadable answer ({exc})")
        self.fallbacks += sum(r is None for r in out)
        return out

    def _runs(self, values: list[bytes | None]) -> list[tuple[int, int]]:
        """Contiguous runs of ``values``, one per worker, of about equal bytes."""
        n = self.processes
        if n == 1:
            return [(0, len(values))]
        total = sum(len(v) for v in values if v) or 1
        runs, start, acc = [], 0, 0
        for i, v in enumerate(values):
            acc += len(v) if v else 0
            if len(runs) < n - 1 and acc * n >= total * (len(runs) + 1):
                runs.append((start, i + 1))
                start = i + 1
        runs.append((start, len(values)))
        runs += [(len(values), len(values))] * (n - len(runs))
        return runs

    def _result(self, item: tuple[Any, ...], mirror: wf.TableMirror) -> Result:
        kind = item[0]
        if kind == wf.INGEST:
            return wf.read_ingest(item, self._canon, mirror)[2]
        if kind == DEAD:
            return DeadValue(str(item[1]), str(item[2]))
        if kind == FAILED:
            log.warning("Kafka decode worker could not decode a record (%s); decoding it in the consumer thread",
                        str(item[1])[:300])
            return None
        raise ValueError(f"an item of kind {kind!r}")

    def _ready(self, slot: int) -> bool:
        """The slot's worker is up, or was started again now (at most once per ``restart_delay_s``)."""
        if self._workers[slot] is not None:
            return True
        if self._closed or self.clock() < self._retry_at[slot]:
            return False
        # A restart happens between polls: bounded like an answer, so the group keeps this member.
        if self._start(slot, min(self.start_timeout_s, self.reply_timeout_s)):
            self.restarts += 1
            return True
        return False

    def _lost(self, slot: int, why: str) -> None:
        """Stop and forget a worker that died or broke; its runs are decoded in the consumer thread."""
        worker, self._workers[slot] = self._workers[slot], None
        if worker is None:
            return
        self._retry_at[slot] = self.clock() + self.restart_delay_s
        self._stop(worker, kill=True)
        log.warning("Kafka decode worker %d (pid %d) was stopped: %s, exit code %s; its records are decoded in the "
                    "consumer thread until a new one starts", slot, worker.proc.pid, why, worker.proc.exitcode)

    @staticmethod
    def _stop(worker: _Worker, *, kill: bool = False) -> None:
        if not kill:
            with contextlib.suppress(OSError):
                worker.conn.sendall(wf.frame((wf.STOP,)))
        with contextlib.suppress(OSError):
            worker.stream.close()
            worker.conn.close()
        if kill:
            worker.proc.kill()
        worker.proc.join(5)
        if worker.proc.is_alive():
            worker.proc.kill()
            worker.proc.join(5)

    def close(self) -> None:
        """Stop every worker (they exit at STOP or EOF)."""
        self._closed = True
        for slot, worker in enumerate(self._workers):
            self._workers[slot] = None
            if worker is not None:
                self._stop(worker)
