"""``cpu_affinity`` in a real daemon: its event loop and detector thread on the chosen CPU, its OTLP
worker and refit worker processes on the mask it started with, and the masks given back at shutdown."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import numpy as np
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

from helpers.daemon import make_config
from helpers.procs import wait_until
from helpers.spans import emit_call, provider
from toolwatch.collector.daemon import Daemon
from toolwatch.detectors.base import Detector
from toolwatch.detectors.events import Batch, Finding
from toolwatch.detectors.iforest import ForestParams

ALLOWED = set(os.sched_getaffinity(0))
pytestmark = pytest.mark.skipif(len(ALLOWED) < 2, reason="pinning apart needs a process allowed on 2+ CPUs")


class MaskRecorder(Detector):
    """Records the CPU mask of the thread the pipeline runs detectors on."""

    name = "mask_recorder"

    def __init__(self) -> None:
        self.masks: list[set[int]] = []
        self.calls = 0

    def observe(self, batch: Batch) -> list[Finding]:
        self.masks.append(set(os.sched_getaffinity(0)))
        self.calls += len(batch.calls)
        return []

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        pass


def _fit_in_pinned_thread(d: Daemon, loop: asyncio.AbstractEventLoop) -> set[int]:
    """A refit as the retrainer makes one: from a thread of the daemon's executor (so pinned); that
    thread's mask."""
    seen: list[set[int]] = []

    def fit() -> None:
        seen.append(set(os.sched_getaffinity(0)))
        d.refit_worker.fit(np.random.default_rng(0).normal(size=(64, 3)), ForestParams(n_estimators=5))  # type: ignore[union-attr]

    asyncio.run_coroutine_threadsafe(asyncio.to_thread(fit), loop).result(60)
    return seen[0]


@pytest.mark.parametrize("setting", ["explicit", "auto"])
def test_daemon_threads_pinned_children_not_masks_restored(tmp_path, setting: str) -> None:
    cpu = max(ALLOWED)
    recorder = MaskRecorder()
    cfg = make_config(tmp_path, otlp_processes=1,
                      cpu_affinity=str(cpu) if setting == "explicit" else "auto")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def call(coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def start() -> Daemon:
        d = Daemon(cfg, detectors=[recorder])
        await d.start()
        return d

    try:
        d = call(start())
        assert d.affinity.choice.cpus == frozenset({cpu}), d.affinity.choice.reason
        assert set(os.sched_getaffinity(thread.native_id)) == {cpu}  # the event loop's thread
        assert set(os.sched_getaffinity(0)) == ALLOWED  # this (test) thread is not the daemon's

        port = d.receiver("otlp_http").bound_port
        tp = provider(HttpExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces"))
        emit_call(tp, agent="a1", server="files", tool="read_file")
        tp.shutdown()
        wait_until(lambda: recorder.calls >= 1, 20, "the call to reach the detectors")
        assert recorder.masks and all(m == {cpu} for m in recorder.masks)

        (worker,) = d.receiver("otlp_http").pids  # type: ignore[attr-defined]
        assert set(os.sched_getaffinity(worker)) == ALLOWED

        assert _fit_in_pinned_thread(d, loop) == {cpu}
        assert set(os.sched_getaffinity(d.refit_worker.pid)) == ALLOWED  # type: ignore[union-attr, arg-type]

        call(d.shutdown())
        assert set(os.sched_getaffinity(thread.native_id)) == ALLOWED
        assert not d.affinity.pinned
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_off_leaves_every_thread_to_the_os(tmp_path) -> None:
    recorder = MaskRecorder()
    cfg = make_config(tmp_path, otlp_processes=0, cpu_affinity="off")

    async def run() -> None:
        d = Daemon(cfg, detectors=[recorder])
        await d.start()
        try:
            assert d.affinity.choice.cpus is None
            assert set(os.sched_getaffinity(0)) == ALLOWED
        finally:
            await d.shutdown()

    asyncio.run(run())
