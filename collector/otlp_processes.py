"""How many worker processes each OTLP receiver (OTLP/HTTP, OTLP/gRPC) runs: ``otlp_processes`` as
configured, or ``auto``.

One worker takes receiving, decoding and normalising off the daemon's interpreter and onto another
core (fleet traffic on 2 cores: 44-46k spans/s against 25k in-process, docs/ingestion.md). With a
single usable CPU the worker only competes with the detectors for it, so ``auto`` keeps OTLP in the
daemon's process there.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

AUTO = "auto"
"""The ``otlp_processes`` setting that lets the daemon choose (the default)."""

MAX_PROCESSES = 64


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """CPUs this process may use: its affinity mask (taskset, cpusets) where the OS has one, else the
    machine's count, lowered to a cgroup CPU quota (``docker --cpus``, a Kubernetes CPU limit) rounded
    down, at least 1: two cores' affinity under a 1-CPU quota gives one CPU's time, and a worker
    process there only competes with the detectors."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    cpus = len(getaffinity(0)) if getaffinity is not None else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return cpus


def cgroup_cpu_quota(cgroup_root: Path, proc_cgroup: Path) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup and its parents, or None without one.

    cgroup v2: ``cpu.max`` (``max 100000`` or ``QUOTA PERIOD``) along the ``0::`` path; cgroup v1:
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1: none) along the ``cpu`` controller's path.
    Files that are missing or unreadable count as no quota: this only tunes a default.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            quotas += _along(cgroup_root, path, _v2_quota)
        elif "cpu" in controllers.split(","):
            quotas += _along(cgroup_root / controllers, path, _v1_quota)
    return min(quotas, default=None)


def _along(base: Path, path: str, read: Callable[[Path], float | None]) -> list[float]:
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    found = []
    for depth in range(len(parts), -1, -1):
        quota = read(base.joinpath(*parts[:depth]))
        if quota is not None:
            found.append(quota)
    return found


def _v2_quota(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
        return int(quota) / int(period) if quota != "max" and int(period) > 0 else None
    except (OSError, ValueError):
        return None


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class OtlpProcessesChoice:
    """The worker count the daemon uses, and why (logged at start when ``auto`` decided)."""

    processes: int
    reason: str


def choose_otlp_processes(setting: int | str, *, redact_args_given: bool = False,
                          cpus: int | None = None) -> OtlpProcessesChoice:
    """Resolve a validated ``otlp_processes`` setting; an explicit number is kept as it is.

    ``auto`` is 0 when the caller hands the daemon a redactor object (``Daemon(redact_args=...)``):
    a Python callable cannot reach a worker process, and in-process is the only way to honour it.
    """
    return _choose(setting, "one worker process per OTLP receiver", "OTLP in the daemon's process",
                   redact_args_given=redact_args_given, cpus=cpus)


def choose_decode_processes(setting: int | str, *, redact_args_given: bool = False,
                            cpus: int | None = None) -> OtlpProcessesChoice:
    """Resolve a validated ``kafka.decode_processes`` setting, by ``choose_otlp_processes``'s rule."""
    return _choose(setting, "one Kafka decode worker process", "Kafka records decoded in the consumer thread",
                   redact_args_given=redact_args_given, cpus=cpus)


def _choose(setting: int | str, one: str, none: str, *, redact_args_given: bool, cpus: int | None
            ) -> OtlpProcessesChoice:
    if setting != AUTO:
        return OtlpProcessesChoice(int(setting), "set explicitly")
    if redact_args_given:
        return OtlpProcessesChoice(0, f"{none}: a redact_args object was given, "
                                      "and worker processes can only build the redactor from fingerprint_key")
    cpus = usable_cpus() if cpus is None else cpus
    if cpus >= 2:
        return OtlpProcessesChoice(1, f"{one}: {cpus} CPUs usable by this process")
    return OtlpProcessesChoice(0, f"{none}: only {cpus} CPU usable by this process")
