"""``cpu_affinity``: the daemon's threads kept on one CPU, its worker processes left to the others.

The daemon's event loop and its detector thread hand Python's GIL to each other hundreds of times
a second. Left to the scheduler, the two threads run on any core; each handoff wakes the other
thread, often on a core that an OTLP worker, the refit worker or another program holds at that
moment, and the daemon waits for the wake-up with nobody running Python. On 2 CPUs under fleet
load the daemon process got ~80-90 % of a core while its queue was full; with its threads on one
CPU it got 99 %, and took 4-18 % more spans in the same minute (bench/ingest.py --soak,
docs/ingestion.md). The worker processes keep the mask the daemon started with, so the scheduler
moves them off the daemon's CPU.

Only the thread that applies the setting (the one running the daemon's event loop) is pinned, and
with it every thread it starts afterwards (the detector thread, the receivers' threads); other
threads of the process keep theirs, so a program or test embedding the daemon is not pinned, and
``restore`` gives the threads it pinned their mask back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .otlp_processes import usable_cpus

AUTO = "auto"
OFF = "off"

log = logging.getLogger("toolwatch.cpu_affinity")

CpuAffinitySetting = str | tuple[int, ...]
"""``auto``, ``off`` or the CPUs to pin the daemon to, in order."""


def cpu_affinity_error(value: object) -> str:
    """What ``cpu_affinity`` accepts, for every place that reads it (file, flag, Config)."""
    return (f"cpu_affinity: must be auto (the daemon's threads on one CPU when it can use at least 2), off (leave "
            f"placement to the OS) or the CPUs to keep the daemon on, as numbers or a list like 3 or 2,3 or 0-1; "
            f"got {value!r}")


def parse_cpu_affinity(value: Any) -> CpuAffinitySetting:
    """``cpu_affinity`` from a config file or a flag: ``auto``/``off`` (any case), a CPU number, a
    list of them, or Linux's cpulist text (``0-2,5``, as ``taskset -c`` and cpusets write it)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in (AUTO, OFF):
            return text
        cpus: list[int] = []
        for part in text.split(","):
            lo, dash, hi = part.strip().partition("-")
            if not (lo.isascii() and lo.isdigit()) or (dash and not (hi.isascii() and hi.isdigit())):
                raise ValueError(cpu_affinity_error(value))
            first, last = int(lo), int(hi) if dash else int(lo)
            if last < first or last - first > 4096:
                raise ValueError(cpu_affinity_error(value))
            cpus.extend(range(first, last + 1))
        return _cpus(cpus, value)
    if value is False:  # YAML reads a bare ``off`` as false
        return OFF
    if isinstance(value, int) and not isinstance(value, bool):
        return _cpus([value], value)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return _cpus(list(value), value)
    raise ValueError(cpu_affinity_error(value))


def _cpus(cpus: list[int], value: object) -> tuple[int, ...]:
    if not cpus or min(cpus) < 0:
        raise ValueError(cpu_affinity_error(value))
    return tuple(sorted(set(cpus)))


@dataclass(frozen=True)
class AffinityChoice:
    """The CPUs the daemon's threads keep to (None: wherever the OS puts them), and why."""

    cpus: frozenset[int] | None
    reason: str


def choose_cpu_affinity(setting: CpuAffinitySetting, *, helpers: bool, allowed: set[int] | None = None,
                        usable: int | None = None) -> AffinityChoice:
    """Resolve a parsed ``cpu_affinity``. ``helpers``: whether other processes of the daemon (OTLP
    workers, the refit worker) do its work on other cores; ``auto`` pins only then, when the daemon
    may use at least 2 CPUs, and pins it to the highest-numbered of them (the first CPUs usually
    take more of the machine's interrupts). Explicit CPUs must be ones the process may use."""
    setaffinity = getattr(os, "sched_setaffinity", None)
    if setting == OFF:
        return AffinityChoice(None, "off: the OS places the daemon's threads")
    if setaffinity is None:
        if setting == AUTO:
            return AffinityChoice(None, "this OS offers no CPU affinity")
        raise ValueError("cpu_affinity: this OS offers no CPU affinity; set it to auto or off")
    allowed = set(os.sched_getaffinity(0)) if allowed is None else allowed
    if setting == AUTO:
        usable = usable_cpus() if usable is None else usable
        if not helpers:
            return AffinityChoice(None, "auto: no worker processes share the load (refit_in_process and no OTLP "
                                        "worker), so the daemon's threads may use every core")
        if min(usable, len(allowed)) < 2:
            return AffinityChoice(None, f"auto: only {min(usable, len(allowed))} CPU usable by this process")
        cpu = max(allowed)
        return AffinityChoice(frozenset({cpu}), f"auto: the daemon's threads on CPU {cpu}, its worker processes "
                                                f"on the others of {_cpulist(allowed)}")
    wanted = set(setting)
    outside = sorted(wanted - allowed)
    if outside:
        raise ValueError(f"cpu_affinity: CPU {_cpulist(set(outside))} is not one this process may run on "
                         f"(allowed: {_cpulist(allowed)}); choose among those, or auto")
    return AffinityChoice(frozenset(wanted), f"set explicitly: the daemon's threads on CPU {_cpulist(wanted)}")


def _cpulist(cpus: set[int] | frozenset[int]) -> str:
    """``{0, 1, 2, 5}`` -> ``0-2,5``."""
    out: list[str] = []
    for cpu in sorted(cpus):
        if out and out[-1].rsplit("-", 1)[-1] == str(cpu - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{cpu}"
        else:
            out.append(str(cpu))
    return ",".join(out)


class ThreadAffinity:
    """Pins the calling thread and the threads it starts to ``choice.cpus``; ``restore`` undoes it.

    Linux applies an affinity to one thread, and a new thread or process inherits its creator's:
    so the daemon's child processes are started inside ``released()``, with the mask the daemon
    had before, or they would share its one CPU."""

    def __init__(self, choice: AffinityChoice, tasks: Path = Path("/proc/self/task")) -> None:
        self.choice = choice
        self._tasks = tasks
        self._saved: set[int] | None = None
        self._tid = 0
        self._before: set[str] = set()

    @property
    def pinned(self) -> bool:
        return self._saved is not None

    @property
    def original_cpus(self) -> set[int] | None:
        """The mask the daemon had before ``apply`` while it is pinned (a forked child's), else None."""
        return None if self._saved is None else set(self._saved)

    def apply(self) -> None:
        """Pin the calling thread; if the OS refuses (a CPU gone offline, a cpuset changed since
        start-up), the daemon runs unpinned and says so, rather than not starting over a tuning."""
        if self.choice.cpus is None or self._saved is not None:
            return
        saved = set(os.sched_getaffinity(0))
        try:
            os.sched_setaffinity(0, self.choice.cpus)
        except OSError as exc:
            log.warning("cpu_affinity: could not keep the daemon's threads on CPU %s (%s); they run wherever the "
                        "OS puts them. Set cpu_affinity to CPUs this process may use, or off",
                        _cpulist(self.choice.cpus), exc.strerror or exc)
            return
        self._saved, self._tid, self._before = saved, threading.get_native_id(), self._thread_ids()

    def restore(self) -> None:
        """The applying thread and every thread started since get the mask from before ``apply``
        (a thread that has ended meanwhile is skipped)."""
        if self._saved is None:
            return
        saved, self._saved = self._saved, None
        for tid in {str(self._tid)} | (self._thread_ids() - self._before):
            with contextlib.suppress(OSError, ValueError):
                os.sched_setaffinity(int(tid), saved)

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        """The calling thread back on the daemon's original mask for the duration (start a child
        process in here); a thread that is not pinned is left as it is."""
        saved = self._saved
        if saved is None or set(os.sched_getaffinity(0)) != set(self.choice.cpus or ()):
            yield
            return
        os.sched_setaffinity(0, saved)
        try:
            yield
        finally:
            os.sched_setaffinity(0, self.choice.cpus)  # type: ignore[arg-type]

    def _thread_ids(self) -> set[str]:
        try:
            return set(os.listdir(self._tasks))
        except OSError:
            return set()
