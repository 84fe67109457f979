"""``Daemon.run_forever`` stops on SIGINT/SIGTERM and gives back the handlers that were there before:
left installed, they sent later signals to a daemon that had stopped (an embedding process, or one
running daemons one after another, then ignored SIGTERM). A second signal during the stop is logged."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import requests

from helpers.otlp_build import add_span, request
from toolwatch.collector.config import Config
from toolwatch.collector.daemon import Daemon
from toolwatch.detectors.new_tool import NewToolConfig, NewToolDetector
from toolwatch.instrumentation import semconv as sc


def _daemon(tmp_path: Path, name: str = "data") -> Daemon:
    cfg = Config(otlp_http="127.0.0.1:0", otlp_grpc="off", listen="127.0.0.1:0", data_dir=str(tmp_path / name))
    cfg.pipeline.refit_in_process = True
    cfg.validate()
    return Daemon(cfg, detectors=[NewToolDetector(NewToolConfig(min_calls=1))])


async def _running(d: Daemon) -> asyncio.Task[None]:
    task = asyncio.create_task(d.run_forever())
    deadline = time.monotonic() + 30
    while not d.ready():
        assert not task.done() and time.monotonic() < deadline, "the daemon did not start"
        await asyncio.sleep(0.02)
    return task


async def _signalled(sig: signal.Signals, seen: list[str], what: str) -> None:
    os.kill(os.getpid(), sig)
    deadline = time.monotonic() + 10
    while what not in seen:
        assert time.monotonic() < deadline, f"{sig.name} did not reach {what}"
        await asyncio.sleep(0.01)


async def test_the_python_handler_installed_before_is_back_after_the_stop(tmp_path):
    seen: list[str] = []
    previous = signal.signal(signal.SIGTERM, lambda *_: seen.append("app"))
    try:
        mine = signal.getsignal(signal.SIGTERM)
        for name in ("first", "second"):  # two daemons, one after another, in one process
            d = _daemon(tmp_path, name)
            task = await _running(d)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(task, 60)
            assert not d.ready() and seen == []
            assert signal.getsignal(signal.SIGTERM) is mine
        await _signalled(signal.SIGTERM, seen, "app")
    finally:
        signal.signal(signal.SIGTERM, previous)


async def test_the_loop_handler_installed_before_is_back_after_the_stop(tmp_path):
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    loop.add_signal_handler(signal.SIGINT, seen.append, "app")
    try:
        d = _daemon(tmp_path)
        task = await _running(d)
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.wait_for(task, 60)
        assert seen == []
        await _signalled(signal.SIGINT, seen, "app")
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _body(n: int) -> bytes:
    req = request("svc")
    for i in range(n):
        add_span(req, {sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL, sc.GEN_AI_TOOL_NAME: f"tool{i}",
                       sc.GEN_AI_AGENT_ID: "a"}, start_ns=time.time_ns())
    return req.SerializeToString()


async def test_a_second_signal_during_the_stop_says_what_it_is_still_doing(tmp_path, caplog):
    """Before, a second Ctrl-C while the queue drained did nothing and said nothing."""
    d = _daemon(tmp_path)
    d.pipeline.batch_max_size = 100_000
    d.pipeline.batch_max_delay_s = 600.0  # the calls wait in the queue until the stop drains them
    previous = signal.getsignal(signal.SIGINT)
    task = await _running(d)
    url = f"http://127.0.0.1:{d.receiver('otlp_http').bound_port}/v1/traces"
    r = await asyncio.to_thread(requests.post, url, data=_body(3), timeout=20,
                                headers={"Content-Type": "application/x-protobuf"})
    assert r.status_code == 200
    d.pipeline.detector_lock.acquire()  # the drain waits for the detectors: the stop is in progress
    try:
        with caplog.at_level(logging.INFO, "toolwatch.daemon"):
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.monotonic() + 30
            while d.pipeline.running:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.sleep(0.2)
            assert not task.done()
    finally:
        d.pipeline.detector_lock.release()
    await asyncio.wait_for(task, 60)
    assert d.pipeline.processed == 3
    assert "SIGINT received: stopping (draining 3 queued calls, saving state)" in caplog.text
    assert "SIGINT received again: the stop is still running (it processes and saves the calls" in caplog.text
    assert signal.getsignal(signal.SIGINT) is previous
