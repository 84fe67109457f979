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
from helpers.procs import process_gone
from helpers.webhook_receiver import WebhookReceiver
from toolwatch.collector.config import Config, WebhookConfig
from toolwatch.collector.daemon import Daemon
from toolwatch.collector.receivers import Receiver
from toolwatch.collector.store import Store
from toolwatch.detectors.events import Batch
from toolwatch.detectors.features import N_FEATURES
from toolwatch.detectors.iforest import ForestModel, ForestParams
from toolwatch.detectors.iforest_detector import ForestConfig, IsolationForestDetector
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


async def _post(d: Daemon, n: int, agent: str) -> None:
    """``n`` calls sent and acknowledged (200); they wait in the daemon's queue."""
    url = f"http://127.0.0.1:{d.receiver('otlp_http').bound_port}/v1/traces"
    r = await asyncio.to_thread(requests.post, url, data=_body(n, agent), headers=PB, timeout=20)
    assert r.status_code == 200, r.text


async def _start_refit_worker(d: Daemon) -> int:
    assert d.refit_worker is not None
    await asyncio.to_thread(d.refit_worker.fit, np.ones((4, N_FEATURES)), ForestParams(n_estimators=1))
    pid = d.refit_worker.pid
    assert pid is not None and not process_gone(pid)
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
        assert all(process_gone(p) for p in workers) and process_gone(refit)
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
    assert process_gone(refit)
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
    while not process_gone(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert process_gone(pid)
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
        assert process_gone(replacement)
    finally:
        if replacement and not process_gone(replacement):
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
        assert process_gone(pid)
        assert not d.pipeline.running
        _assert_closed(d.store)
    finally:
        if pid and not process_gone(pid):
            os.kill(pid, signal.SIGKILL)
        await d.shutdown()


def _forest_daemon(cfg: Config) -> tuple[Daemon, IsolationForestDetector, dict]:
    """A daemon whose IsolationForest has agent "a" due for a refit (its old model kept meanwhile)."""
    det = IsolationForestDetector(ForestConfig(forest=ForestParams(n_estimators=20, max_samples=64), min_rows=60,
                                               max_rows=256, retrain_every=200, auto_retrain=False))
    st = det.state_for("a")
    st.add_rows(np.random.default_rng(5).normal(size=(120, N_FEATURES)))
    det._models["a"] = ForestModel(st.window(), ForestParams(n_estimators=5))
    st.since_fit = 500
    return Daemon(cfg, detectors=[det]), det, det._models["a"].to_dict()


async def test_a_stuck_refit_worker_does_not_hold_the_stop_and_the_saved_state_asks_for_the_refit_again(
        tmp_path, caplog):
    """Shutdown waited for the refit in flight for up to the worker's ``fit_timeout_s`` (600 s): a
    stuck worker held a SIGTERM'd daemon far beyond a service manager's stop timeout (30 s in
    Kubernetes), which then killed it before it drained and saved anything. Now the refit gets a
    few seconds, then the worker is stopped and the refit dropped; the state saved still asks for it."""
    cfg = _config(tmp_path)
    d, det, old = _forest_daemon(cfg)
    await d.start()
    stuck = 0
    try:
        stuck = await _start_refit_worker(d)
        os.kill(stuck, signal.SIGSTOP)  # hung: it never answers
        d.retrainer(Batch(), [])  # as after a batch: agent "a" is due
        await asyncio.sleep(0.5)  # the fit's request is with the worker
        assert d.retrainer._task is not None and not d.retrainer._task.done()
        await _post(d, 2, "acked")
        t0 = time.monotonic()
        stopping = asyncio.create_task(d.shutdown())
        with caplog.at_level(logging.WARNING):
            done, _ = await asyncio.wait({stopping}, timeout=40)
        assert done, "shutdown still waits for the stuck refit worker"
        took = time.monotonic() - t0
        await stopping
        assert took < 40
        assert process_gone(stuck)
        assert "a model refit is still running 5 s into the shutdown: stopping it" in caplog.text
        assert f"refit worker process {stuck} was stopped mid-fit by the daemon's shutdown" in caplog.text
        assert d.pipeline.processed == 2
        _assert_closed(d.store)
    finally:
        if stuck and not process_gone(stuck):
            os.kill(stuck, signal.SIGKILL)
        await d.shutdown()
    # The restart has the old model and asks for the refit at once (not 200 rows later).
    d2, det2, _old = _forest_daemon(cfg)
    d2.pipeline.restore_state()
    try:
        assert det2._models["a"].to_dict() == old
        assert det2._state["a"].since_fit == 500 and "a" in det2.needs_retrain()
    finally:
        d2.store.close()


def _restored_forest(cfg: Config) -> tuple[dict, int, list[str]]:
    """What a daemon restarted from the stored state (as after a crash) has for agent "a": its
    model, its ``since_fit`` and the keys it asks to refit at once."""
    _d, det, _old = _forest_daemon(cfg)
    _d.store.close()
    store = Store(cfg.data_path / "toolwatch.db")
    try:
        det.restore(store.load_state("iforest"))
    finally:
        store.close()
    return det._models["a"].to_dict(), det._state["a"].since_fit, det.needs_retrain()


async def test_a_snapshot_taken_mid_refit_asks_for_the_refit_again_and_one_after_it_keeps_the_model(tmp_path):
    """The periodic snapshot taken while a refit was with the refit worker saved ``since_fit`` 0
    without the new model: a daemon that crashed then came back with the old model and refitted
    only ``retrain_every`` (here 200) rows later. Now that snapshot records the refit as wanted."""
    cfg = _config(tmp_path)
    d, det, old = _forest_daemon(cfg)
    await d.start()
    worker = 0
    try:
        worker = await _start_refit_worker(d)
        os.kill(worker, signal.SIGSTOP)  # the fit stays in flight until SIGCONT
        d.retrainer(Batch(), [])  # as after a batch: agent "a" is due
        await asyncio.sleep(0.5)  # the fit's request is with the worker
        assert d.retrainer._task is not None and not d.retrainer._task.done()
        d.pipeline.save_state()  # the periodic snapshot (between batches), mid-refit
        model, since, due = _restored_forest(cfg)
        assert since == 500 and "a" in due  # was 0: no refit until 200 more rows
        assert model == old
        os.kill(worker, signal.SIGCONT)
        await asyncio.wait_for(d.retrainer.wait(), 60)
        assert d.retrainer.fitted >= 1
        d.pipeline.save_state()  # the next snapshot, with the new model in place
        model, since, due = _restored_forest(cfg)
        assert since == 0 and "a" not in due
        assert model != old and model == det._models["a"].to_dict()
    finally:
        if worker and not process_gone(worker):
            os.kill(worker, signal.SIGCONT)
        await d.shutdown()


async def test_a_refit_that_finishes_within_the_grace_is_kept(tmp_path):
    """The grace is not a cut-off for healthy refits: one that finishes in time is saved."""
    cfg = _config(tmp_path)
    d, det, old = _forest_daemon(cfg)
    await d.start()
    try:
        await _start_refit_worker(d)
        d.retrainer(Batch(), [])
        await asyncio.wait_for(d.shutdown(), 60)
    finally:
        await d.shutdown()
    assert d.retrainer.fitted >= 1
    d2, det2, _old = _forest_daemon(cfg)
    d2.pipeline.restore_state()
    try:
        assert det2._models["a"].to_dict() != old and det2._state["a"].since_fit == 0
    finally:
        d2.store.close()


async def test_the_alerts_of_the_final_drain_are_delivered_before_the_daemon_stops(tmp_path):
    """The calls acknowledged before the stop are drained into alerts; the webhook sink used to be
    stopped before it sent them: they waited in the outbox for the next start with this data_dir."""
    with WebhookReceiver() as hook:
        cfg = _config(tmp_path, webhooks=[WebhookConfig(url=hook.url, name="ops")])
        d = _daemon(cfg)
        await d.start()
        try:
            await _post(d, 3, "acked")
            assert d.pipeline.depth == 3
            await asyncio.wait_for(d.shutdown(), 60)
        finally:
            await d.shutdown()
        ids = {r.headers["X-Toolwatch-Alert-Ids"] for r in hook.received}
    store = Store(cfg.data_path / "toolwatch.db")
    try:
        stored = {a.id for a in store.list_alerts()}
        assert len(stored) == 2  # tool1 and tool2 are new after tool0 (min_calls=1)
        assert set(",".join(sorted(ids)).split(",")) == stored and store.outbox_depth("ops") == 0
    finally:
        store.close()


async def test_a_proxy_long_polling_a_hold_does_not_hold_the_stop(tmp_path):
    """The API's stop waited for the long-poll of a held call (a proxy asks for up to 30 s at a
    time, the API allows 60): the daemon's stop took that long. Now the poll is answered at once
    with the hold still pending; the proxy's next poll finds the daemon gone (its fail mode)."""
    d = _daemon(_config(tmp_path))
    await d.start()
    base = f"http://127.0.0.1:{d.api.bound_port}/api/v1/holds"
    try:
        r = await asyncio.to_thread(requests.post, base, json={"tool": "t", "agent_id": "a"}, timeout=10)
        assert r.status_code == 201
        hold = r.json()["id"]
        poll = asyncio.create_task(asyncio.to_thread(requests.get, f"{base}/{hold}?wait=30", timeout=90))
        await asyncio.sleep(0.5)  # the poll waits in the API
        assert not poll.done()
        t0 = time.monotonic()
        stopping = asyncio.create_task(d.shutdown())
        done, _ = await asyncio.wait({stopping}, timeout=20)
        assert done, "the stop waits for the long-poll"
        await stopping
        assert time.monotonic() - t0 < 20
        answer = await asyncio.wait_for(poll, 10)
        assert answer.status_code == 200 and answer.json()["status"] == "pending"
    finally:
        await d.shutdown()


@pytest.mark.parametrize("where,processes", [("otlp_http", 0), ("otlp_http", 1), ("api", 0)])
async def test_a_client_stalled_mid_request_does_not_hold_the_stop(tmp_path, where, processes):
    """A client that sent the headers and part of the body, then nothing: aiohttp's stop waited 60 s
    for that request (in an OTLP worker process the daemon killed the worker after 20 s)."""
    d = _daemon(_config(tmp_path, otlp_processes=processes))
    await d.start()
    try:
        port = d.receiver("otlp_http").bound_port if where == "otlp_http" else d.api.bound_port
        path = "/v1/traces" if where == "otlp_http" else "/api/v1/holds"
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                        "Content-Length: 1000\r\n\r\nabc".encode())
        await asyncio.sleep(0.5)  # the request is with the server, waiting for the rest of its body
        t0 = time.monotonic()
        stopping = asyncio.create_task(d.shutdown())
        done, _ = await asyncio.wait({stopping}, timeout=15)
        assert done, "the stop waits for the stalled request"
        await stopping
        assert time.monotonic() - t0 < 15
        stalled.close()
    finally:
        await d.shutdown()
