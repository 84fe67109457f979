"""Detector-state snapshots written by a forked child process, as Redis writes its BGSAVE.

Why: a snapshot (every detector's state as JSON into SQLite) takes ~0.35 s of interpreter time on a
fleet's state, and the daemon takes one every ``snapshot_interval_s`` and, with Kafka, before each
offset commit: on fleet traffic that was ~13 % of the daemon's interpreter, with no batch processed
meanwhile. ``fork()`` copies the process's memory lazily (copy on write), so the child sees every
detector exactly as it was when the daemon forked it, between two batches with the detector lock
held, while the daemon goes on with the next batch at once. The daemon's cost is the fork (~30 ms
with a fleet's state) and the pages it writes to while the child runs, which are copied then
(~190 ms over a child's ~1 s; CPython's reference counts make reads writes): ~220 ms against the
~280 ms of a save in the daemon, and no stop of the pipeline. The child takes ~0.9 s of CPU on the
other cores (bench/snapshot.py).

The child runs only the forking thread. It touches nothing the daemon's other threads may hold a
lock on: it opens its own SQLite connection, never logs, and leaves through ``os._exit``. A lock a
daemon thread held at the fork stays held in the child; the only one a snapshot takes is the
IsolationForest window lock, which only the detector thread (stopped by the detector lock) and
readers take, so the child replaces it (``Detector.after_fork_in_child``). Should the child still
hang, the daemon kills it after ``timeout_s`` and saves in its own process instead.

A state written by the child never replaces one written after the fork (an approval saving a
detector's state): each write carries the generation reserved when the snapshot was taken
(``Store.reserve_generation``, ``store.write_states``).
"""

from __future__ import annotations

import gc
import os
import select
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NoReturn, Sequence

from toolwatch.detectors.base import Detector

from .state_json import dumps_state_bytes
from .store import connect, write_states

__all__ = ["SnapshotChild", "fork_snapshot", "fork_available"]

ERROR_BYTES = 4000
"""Most bytes of error text a child reports back."""


def fork_available(state_path: Path | None) -> bool:
    """Whether snapshots can be taken in a child: ``fork`` exists and detector state is in a file
    (``Store.state_path``; a child cannot write into the daemon's in-memory database)."""
    return hasattr(os, "fork") and state_path is not None


@dataclass
class SnapshotChild:
    """A snapshot being written by child process ``pid``; ``wait`` for its outcome."""

    pid: int
    errors_fd: int
    seq: int
    """The pipeline ticket the snapshot covers (``Pipeline.done_seq`` at the fork)."""
    cpu_s: float = 0.0
    """CPU seconds the child used (user and system), once ``wait`` has returned."""

    def wait(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> str | None:
        """Block until the child ends (call it in a thread): None when every state was written,
        else what went wrong. A child still running after ``timeout_s`` is killed."""
        text = b""
        deadline = clock() + timeout_s
        try:
            while True:  # read its error text as it comes, so a long one cannot block the child
                left = deadline - clock()
                if left <= 0:
                    os.kill(self.pid, signal.SIGKILL)
                    self._reap()
                    return f"the snapshot process did not finish within {timeout_s:g} s and was killed"
                ready, _w, _x = select.select([self.errors_fd], [], [], min(left, 1.0))
                if ready:
                    chunk = os.read(self.errors_fd, 65536)
                    if not chunk:
                        break
                    text = (text + chunk)[:ERROR_BYTES]
        finally:
            os.close(self.errors_fd)
        code = os.waitstatus_to_exitcode(self._reap())
        if code == 0 and not text:
            return None
        reason = text.decode("utf-8", "replace").strip()
        how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        return f"{reason or 'the snapshot process failed'} ({how})"

    def _reap(self) -> int:
        _pid, status, usage = os.wait4(self.pid, 0)
        self.cpu_s = usage.ru_utime + usage.ru_stime
        return status


def fork_snapshot(detectors: Sequence[Detector], state_path: Path | None, seq: int, generation: int, now: float,
                  cpus: set[int] | None = None) -> SnapshotChild:
    """Fork a child that writes every detector's state as of now into ``state_path``
    (``Store.state_path``); call between batches, with the detector lock held. ``cpus``: the CPU mask
    the child runs on (the daemon's mask from before its ``cpu_affinity`` pin, so it does not share
    the daemon's core). Raises ``OSError`` if it cannot fork."""
    read_fd, write_fd = os.pipe()
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns at every fork of a process with threads; the child is written for it.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        _child(detectors, str(state_path), generation, now, write_fd, cpus)
    os.close(write_fd)
    return SnapshotChild(pid, read_fd, seq)


def _child(detectors: Sequence[Detector], db_path: str, generation: int, now: float, errors_fd: int,
           cpus: set[int] | None) -> NoReturn:
    code = 1
    try:
        # The daemon's signal handlers would wake its event loop (the wakeup fd is shared): the
        # child ends on SIGINT/SIGTERM as a plain process does, and the daemon sees that.
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        gc.disable()  # a short life: nothing to collect that exit does not free
        if cpus:
            try:
                os.sched_setaffinity(0, cpus)
            except OSError:
                pass
        states: list[tuple[str, bytes]] = []
        errors: list[str] = []
        for det in detectors:
            try:
                det.after_fork_in_child()
                states.append((det.name, dumps_state_bytes(det.snapshot())))
            except Exception as exc:
                errors.append(f"detector {det.name}: state could not be saved: {exc!r}")
        db = connect(db_path)
        try:
            write_states(db, states, generation, now)
        finally:
            db.close()
        if errors:
            os.write(errors_fd, "; ".join(errors).encode("utf-8", "replace")[:ERROR_BYTES])
        else:
            code = 0
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the daemon, nothing raised here
        try:
            os.write(errors_fd, f"snapshot process: {exc!r}".encode("utf-8", "replace")[:ERROR_BYTES])
        except OSError:
            pass
    finally:
        os._exit(code)
