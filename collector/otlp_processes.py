"""How many OTLP/HTTP worker processes the daemon runs: ``otlp_processes`` as configured, or ``auto``.

One worker takes receiving, decoding and normalising off the daemon's interpreter and onto another
core (fleet traffic on 2 cores: 44-46k spans/s against 25k in-process, docs/ingestion.md). With a
single usable CPU the worker only competes with the detectors for it, so ``auto`` keeps OTLP/HTTP
in the daemon's process there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

AUTO = "auto"
"""The ``otlp_processes`` setting that lets the daemon choose (the default)."""

MAX_PROCESSES = 64


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (taskset, cpusets) where the OS has one,
    else the machine's count. A CPU quota (``docker --cpus``) does not narrow either."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is not None:
        return len(getaffinity(0))
    return os.cpu_count() or 1


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
    if setting != AUTO:
        return OtlpProcessesChoice(int(setting), "set explicitly")
    if redact_args_given:
        return OtlpProcessesChoice(0, "OTLP/HTTP in the daemon's process: a redact_args object was given, "
                                      "and worker processes can only build the redactor from fingerprint_key")
    cpus = usable_cpus() if cpus is None else cpus
    if cpus >= 2:
        return OtlpProcessesChoice(1, f"one OTLP/HTTP worker process: {cpus} CPUs usable by this process")
    return OtlpProcessesChoice(0, f"OTLP/HTTP in the daemon's process: only {cpus} CPU usable by this process")
