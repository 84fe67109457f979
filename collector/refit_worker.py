"""IsolationForest refits in a separate process, so they use the machine's other core.

The daemon is bound by its interpreter lock: fitting a forest in a thread (sklearn's tree
building holds the GIL for much of its ~0.2 s) took about a quarter of the daemon's samples away
from the detectors. ``RefitWorker`` keeps one long-lived worker process (``spawn``: no forked
copy of the daemon's threads and sockets), started on the first fit and restarted after it dies.

Nothing is pickled either way: the parent sends the training sample and the parameters, the
worker fits ``ForestModel`` exactly as the parent would (same code, same ``random_state``) and
sends back ``ForestModel.fitted_arrays()``; both messages are ``np.savez`` archives read with
``allow_pickle=False`` over ``Connection.send_bytes``/``recv_bytes``. The parent rebuilds the
model with ``ForestModel.from_fitted_arrays``: bit-identical to an in-process fit.

``spawn`` starts a fresh interpreter that imports the parent's ``__main__`` module again (as
``__mp_main__``): a script that embeds the daemon must keep its start-up under
``if __name__ == "__main__":`` (the ``toolwatch`` command and the bench scripts do).

If the worker cannot be started, fits run in-process from then on (logged once). If it dies
mid-fit, ``fit`` raises ``RefitWorkerDied``: the caller keeps the previous model and retries later
with a new worker. If the daemon dies (or closes the pipe) mid-fit, the worker exits at once and
quietly: it does not finish a fit nobody will read. ``abort`` (the daemon's shutdown, when a refit
outlasts its grace) stops the worker mid-fit: the fit in flight raises ``RefitWorkerDied`` and is
dropped, so a stop never waits ``fit_timeout_s`` for a stuck worker.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import multiprocessing as mp
import os
import select
import signal
import sys
import threading
from dataclasses import asdict
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, ContextManager

import numpy as np

from toolwatch.detectors.iforest import ForestModel, ForestParams

log = logging.getLogger("toolwatch.refit_worker")

__all__ = ["RefitWorker", "RefitWorkerDied"]

NICE = 10
"""How much lower the worker's CPU priority is than the daemon's."""


class RefitWorkerDied(RuntimeError):
    """The worker process ended while fitting; the previous model stays in use."""


def _pack(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    return buf.getvalue()


def _unpack(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    return arrays, meta


def encode_request(sample: np.ndarray, params: ForestParams) -> bytes:
    return _pack({"sample": np.ascontiguousarray(sample, dtype=np.float64)}, {"params": asdict(params)})


def decode_request(data: bytes) -> tuple[np.ndarray, ForestParams]:
    arrays, meta = _unpack(data)
    return arrays["sample"], ForestParams(**meta["params"])


def encode_model(model: ForestModel) -> bytes:
    return _pack(model.fitted_arrays(), {})


def decode_reply(data: bytes, params: ForestParams) -> ForestModel:
    """The fitted model; raises ``RuntimeError`` if the fit failed."""
    arrays, meta = _unpack(data)
    if "error" in meta:
        raise RuntimeError(f"refit worker: {meta['error']}")
    return ForestModel.from_fitted_arrays(arrays, params)


def _serve(conn: Connection) -> None:
    """The worker's loop: one request, one reply, until the parent closes its end.

    It runs at a lower CPU priority (nice +10) and ignores SIGINT: refits are background work that
    should take idle CPU, not the detectors' or the receivers' when the machine is busy (a refit
    taking longer just makes the retrainer's budget space refits further apart); and a Ctrl-C to
    the daemon's terminal stops the daemon, which then closes the worker itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.nice(NICE)
    except OSError:  # not permitted here: run at the daemon's priority
        pass
    import sklearn.ensemble  # the ~3 s import now, before the first request

    del sklearn

    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            sample, params = decode_request(data)
            reply = encode_model(ForestModel(sample, params))
        except Exception as exc:  # a bad sample must not kill the worker: the parent logs it
            reply = _pack({}, {"error": f"{type(exc).__name__}: {exc}"})
        try:
            conn.send_bytes(reply)
        except (EOFError, OSError):  # the parent closed its end or died mid-fit: nobody wants the reply
            return


def _exit_when_parent_goes(conn: Connection) -> None:
    """Leave at once when the parent's end of the pipe closes, even in the middle of a fit.

    The serving thread only notices at its next send or receive, which for a large fit is seconds
    of CPU spent on a model nobody will read (and, at nice +10, a process lingering after its
    daemon). ``POLLRDHUP`` wakes this thread on the hang-up only, not on a request arriving, so it
    needs no coordination with the serving thread. Where it is missing the worker still leaves
    quietly, after the fit."""
    rdhup = getattr(select, "POLLRDHUP", None)
    if rdhup is None:
        return
    poller = select.poll()
    poller.register(conn.fileno(), rdhup)
    poller.poll()  # returns on RDHUP, or HUP/ERR/NVAL, which are always reported
    os._exit(0)


def _worker_main(conn: Connection) -> None:
    """The worker process: serve, then leave at once, skipping the interpreter's own exit.

    That exit (module and thread-pool teardown after sklearn's imports) costs about 0.25 s of CPU;
    at nice +10 on a busy machine it took longer than ``join_timeout_s``, and ``close`` killed the
    worker ("did not exit; terminating it"). The worker holds nothing that needs finalising."""
    threading.Thread(target=_exit_when_parent_goes, args=(conn,), name="parent-watch", daemon=True).start()
    _serve(conn)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class RefitWorker:
    """Fits ``ForestModel``s in one worker process; ``fit`` is thread-safe (one fit at a time)."""

    def __init__(self, *, join_timeout_s: float = 5.0, fit_timeout_s: float = 600.0,
                 abort_grace_s: float = 2.0,
                 spawn_guard: Callable[[], ContextManager[None]] = contextlib.nullcontext) -> None:
        self.join_timeout_s = join_timeout_s
        self._spawn_guard = spawn_guard
        """Entered around the worker's start: the daemon's ``ThreadAffinity.released`` (cpu_affinity)."""
        self.abort_grace_s = abort_grace_s
        """How long ``abort`` lets the worker exit on SIGTERM before it kills it."""
        self.fit_timeout_s = fit_timeout_s
        """A fit takes well under a second; a worker silent this long is stuck and is killed."""
        self._lock = threading.Lock()
        self._proc: Any = None  # multiprocessing.Process of the spawn context
        self._conn: Connection | None = None
        self.in_process = False
        """Set when the worker could not be started: fits then run in the caller's thread."""
        self.starts = 0
        self._closed = False
        self._aborted = False

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def fit(self, sample: np.ndarray, params: ForestParams) -> ForestModel:
        """``ForestModel(sample, params)``, fitted in the worker process."""
        with self._lock:
            if self._aborted:  # the next key of a refit run that ``abort`` cut short: dropped too
                raise RefitWorkerDied("the refit worker was stopped by the daemon's shutdown; this refit is dropped "
                                      "and asked for again after the restart")
            if self.in_process or self._closed:
                return ForestModel(sample, params)
            if self._proc is None or not self._proc.is_alive():
                self._reap()
                try:
                    self._start()
                except Exception:
                    log.exception("refit worker process could not be started: refits run in the daemon's "
                                  "process from now on (they then share its interpreter with the detectors)")
                    self.in_process = True
                    return ForestModel(sample, params)
            assert self._conn is not None
            try:
                if self._aborted:  # ``abort`` came while the worker started, before it saw the process
                    raise EOFError("aborted")
                self._conn.send_bytes(encode_request(sample, params))
                if not self._conn.poll(self.fit_timeout_s):
                    pid = self.pid
                    self._proc.kill()
                    code = self._reap()
                    raise RefitWorkerDied(f"refit worker process {pid} did not answer in {self.fit_timeout_s:g} s and "
                                          f"was killed (exit code {code}); the previous model stays in use and the "
                                          "refit is retried later in a new worker")
                reply = self._conn.recv_bytes()
            except (EOFError, OSError) as exc:
                pid, code = self.pid, self._reap()
                if self._aborted:
                    raise RefitWorkerDied(f"refit worker process {pid} was stopped mid-fit by the daemon's shutdown "
                                          f"(exit code {code}); this refit is dropped and asked for again after the "
                                          "restart (the previous model stays in the saved state)") from exc
                raise RefitWorkerDied(f"refit worker process {pid} died mid-fit (exit code {code}); the previous "
                                      "model stays in use and the refit is retried later in a new worker") from exc
            return decode_reply(reply, params)

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_worker_main, args=(child,), name="toolwatch-refit", daemon=True)
        try:
            with self._spawn_guard():
                proc.start()
        finally:
            child.close()  # the child's end lives in the child only: its death is then EOF here
        self._proc, self._conn = proc, parent
        self.starts += 1
        log.info("refit worker process %d started", proc.pid)

    def _reap(self) -> int | None:
        """Close the pipe and collect the process (after a death or on close); its exit code."""
        conn, proc, self._conn, self._proc = self._conn, self._proc, None, None
        if conn is not None:
            conn.close()  # the worker reads EOF and returns
        if proc is None:
            return None
        proc.join(self.join_timeout_s)
        if proc.is_alive():
            log.warning("refit worker process %d did not exit; terminating it", proc.pid)
            proc.terminate()
            proc.join(self.join_timeout_s)
            if proc.is_alive():
                proc.kill()
                proc.join()
        code = proc.exitcode
        proc.close()
        return code

    def abort(self) -> None:
        """Stop the worker now, even mid-fit: SIGTERM, then SIGKILL after ``abort_grace_s``.

        For a shutdown that cannot wait for a refit (a stuck worker is otherwise waited for up to
        ``fit_timeout_s``, far beyond a service manager's stop timeout). Takes no lock, since the
        fit in flight holds it: that fit reads EOF, reaps the process and raises ``RefitWorkerDied``.
        Fits after this raise ``RefitWorkerDied`` too (not in-process, as after ``close``: the
        shutdown must not spend the daemon's interpreter on refits it drops); call ``close``
        afterwards to reap a worker that was idle."""
        self._closed = True
        self._aborted = True
        proc = self._proc
        if proc is None:
            return
        try:
            proc.terminate()
            if not wait([proc.sentinel], self.abort_grace_s):
                log.warning("refit worker process %d did not exit on SIGTERM in %g s; killing it",
                            proc.pid, self.abort_grace_s)
                proc.kill()
        except ValueError:  # the fit's thread reaped and closed it meanwhile: it is gone already
            pass

    def close(self) -> None:
        """Stop the worker (waits for a fit in progress) and fit in-process from then on."""
        with self._lock:
            self._closed = True
            if self._proc is not None:
                pid = self.pid
                code = self._reap()
                log.info("refit worker process %s stopped (exit code %s)", pid, code)
