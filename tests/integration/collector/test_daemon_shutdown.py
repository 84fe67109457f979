"""Daemon shutdown runs every step even when one fails or the shutdown is cancelled, and a daemon
that cannot start stops what it had started: no acknowledged call is left unprocessed in the queue,
no child process (OTLP workers, refit worker) is left running."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import re
import signal
import socket
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from helpers.otlp_build import add_span, request
from toolwatch.collector.config import Config
from toolwatch.collector.daemon import Daemon
from toolwatch.collector.receivers import Receiver
from toolwatch.collector.store import Store
from toolwatch.detectors.features import N_FEATURES
from toolwatch.detectors.iforest import ForestParams
from toolwatch.detectors.new_tool import NewToolConfig, NewToolDetector
from toolwatch.instrumentation import semconv as sc

PB = {"Content-Type": "application/x-protobuf"}


def _config(tmp_path: Path, **kw) -> Config:
    """A daemon whose queued calls wait (a batch fills for up to 600 s) until shutdown drains them;
    OTLP/HTTP in the daemon's process unless a test asks for worker processes."""
    kw.setdefault("otlp_processes", 0)
    cfg = Config(otlp_http="127.0.0.1:0", otlp_grpc="off", listen="127.0.0.1:0", data_dir=str(tmp_path / "data"), **kw)
    cfg.pipeline.batch_max_size = 100_000
    cfg.pipeline.batch_max_delay_ms = 600_000
    cfg.pipeline.snapshot_interval_s = 3600
    cfg.validate()
    return cfg


def _daemon(cfg: Config) -> Daemon:
    return Daemon(cfg, detectors=[NewToolDetector(NewToolConfig(min_calls=1))])


def _body(n: int, agent: str) -> bytes:
    req = request("svc")
    now = time.time_ns()
    for i in range(n):
        add_span(req, {sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL, sc.GEN_AI_TOOL_NAME: f"tool{i}",
                       sc.GEN_AI_AGENT_ID: agent}, start_ns=now)
    return req.SerializeToString()


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def _post(d: Daemon, n: int, agent: str) -> None:
    """``n`` calls sent and acknowledged (200); they wait in the daemon's queue."""
    url = f"http://127.0.0.1:{d.receiver('otlp_http').bound_port}/v1/traces"
    r = await asyncio.to_thread(requests.post, url, data=_body(n, agent), headers=PB, timeout=20)
    assert r.status_code == 200, r.text


async def _start_refit_worker(d: Daemon) -> int:
    assert d.refit_worker is not None
    await asyncio.to_thread(d.refit_worker.fit, np.ones((4, N_FEATURES)), ForestParams(n_estimators=1))
    pid = d.refit_worker.pid
    assert pid is not None and not _gone(pid)
    return pid


def _stored_calls(cfg: Config, agent: str) -> int:
    store = Store(cfg.data_path / "toolwatch.db")
    try:
        return store.load_state("new_tool")["agents"][agent]["calls"]
    finally:
        store.close()


def _assert_closed(store: Store) -> None:
    with pytest.raises(sqlite3.ProgrammingError):
        store.db.execute("SELECT 1")


async def test_a_cancelled_shutdown_still_drains_what_was_acknowledged_and_stops_every_process(tmp_path):
    """The cancel landed while the OTLP worker processes drained; shutdown stopped there: the calls
    they had acknowledged stayed in the queue (never seen by the detectors, never saved) and the
    refit worker, the API and the store were left open."""
    cfg = _config(tmp_path, otlp_processes=1)
    d = _daemon(cfg)
    await d.start()
    try:
        workers = d.receiver("otlp_http").pids
        refit = await _start_refit_worker(d)
        await _post(d, 3, "acked")
        assert d.pipeline.depth == 3 and d.pipeline.processed == 0
        stopping = asyncio.create_task(d.shutdown())
        await asyncio.sleep(0)  # the shutdown has begun (the receivers first)...
        stopping.cancel()  # ...when it is cancelled
        with pytest.raises(asyncio.CancelledError):
            await stopping
        assert d.pipeline.processed == 3
        assert _stored_calls(cfg, "acked") == 3
        assert all(_gone(p) for p in workers) and _gone(refit)
        _assert_closed(d.store)
    finally:
        await d.shutdown()  # safe twice; stops what a failing run left behind


class _BrokenReceiver(Receiver):
    """A receiver whose shutdown fails (a real one can, e.g. a Kafka client that raises)."""

    name = "broken"

    async def start(self) -> None:
        pass

    async def shutdown(self) -> None:
        raise RuntimeError("receiver shutdown failed")


async def test_a_failing_shutdown_step_does_not_stop_the_others(tmp_path, caplog):
    cfg = _config(tmp_path)
    d = _daemon(cfg)
    d.receivers.insert(0, _BrokenReceiver())
    await d.start()
    refit = await _start_refit_worker(d)
    await _post(d, 4, "acked")
    assert d.pipeline.depth == 4
    with caplog.at_level(logging.ERROR, "toolwatch.daemon"), pytest.raises(RuntimeError, match="receiver shutdown failed"):
        await asyncio.wait_for(d.shutdown(), 60)
    assert "shutdown: stopping receiver broken failed; the remaining shutdown steps still run" in caplog.text
    assert d.pipeline.processed == 4 and _stored_calls(cfg, "acked") == 4
    assert _gone(refit)
    _assert_closed(d.store)


async def test_a_daemon_that_cannot_start_stops_the_worker_processes_it_started(tmp_path, caplog):
    """The OTLP/gRPC port is taken: the OTLP/HTTP worker processes, started just before, went on
    accepting (and acknowledging) requests on their copy of the listening socket for as long as the
    daemon's process lived."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        cfg = _config(tmp_path, otlp_processes=1)
        cfg.otlp_grpc = f"127.0.0.1:{taken.getsockname()[1]}"
        d = _daemon(cfg)
        with caplog.at_level(logging.INFO, "toolwatch.receiver.otlp_workers"), \
                pytest.raises(OSError, match="otlp_grpc: cannot listen"):
            await d.start()
    finally:
        taken.close()
    started = re.search(r"in 1 worker processes \(pids \[(\d+)\]\)", caplog.text)
    assert started, "the OTLP/HTTP workers should have started before the gRPC receiver failed"
    pid = int(started.group(1))
    deadline = time.monotonic() + 30
    while not _gone(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert _gone(pid)
    assert not d.pipeline.running
    _assert_closed(d.store)


async def test_a_failed_start_reports_its_own_error_not_one_of_the_shutdown_after_it(tmp_path, caplog):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        cfg = _config(tmp_path)
        cfg.otlp_grpc = f"127.0.0.1:{taken.getsockname()[1]}"
        d = _daemon(cfg)
        d.receivers.insert(0, _BrokenReceiver())
        with pytest.raises(OSError, match="otlp_grpc: cannot listen"):
            await d.start()
    finally:
        taken.close()
    assert "shutdown: stopping receiver broken failed" in caplog.text  # logged, not raised
    assert not d.pipeline.running
    _assert_closed(d.store)


async def _new_worker(exclude: int = 0) -> int:
    """The pid of an OTLP worker process just started (before it can answer READY)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for p in mp.active_children():
            if p.name.startswith("toolwatch-otlp-") and p.pid != exclude:
                return p.pid
        await asyncio.sleep(0.002)
    raise AssertionError("no OTLP worker process was started")


async def test_a_shutdown_during_a_worker_restart_leaves_no_worker_behind(tmp_path):
    """Shutdown cancels a restart in progress; the replacement process it had started (not yet
    READY, so not yet known to shutdown) was left running: it kept accepting on its copy of the
    listening socket after the daemon closed its own."""
    d = _daemon(_config(tmp_path, otlp_processes=1))
    await d.start()
    replacement = 0
    try:
        workers = d.receiver("otlp_http")
        [first] = workers.pids
        os.kill(first, signal.SIGKILL)
        replacement = await _new_worker(exclude=first)
        os.kill(replacement, signal.SIGSTOP)  # it cannot say READY: the restart stays in progress
        assert workers.restarts == 0
        await asyncio.wait_for(d.shutdown(), 60)
        assert _gone(replacement)
    finally:
        if replacement and not _gone(replacement):
            os.kill(replacement, signal.SIGKILL)
        await d.shutdown()


async def test_a_cancelled_start_leaves_no_worker_behind(tmp_path):
    """A start cancelled while a worker process starts (a stop requested during start-up, a
    caller's timeout): the process it had started was left running, unknown to shutdown."""
    d = _daemon(_config(tmp_path, otlp_processes=1))
    starting = asyncio.create_task(d.start())
    pid = 0
    try:
        pid = await _new_worker()
        os.kill(pid, signal.SIGSTOP)  # still starting when the cancel lands
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert _gone(pid)
        assert not d.pipeline.running
        _assert_closed(d.store)
    finally:
        if pid and not _gone(pid):
            os.kill(pid, signal.SIGKILL)
        await d.shutdown()
