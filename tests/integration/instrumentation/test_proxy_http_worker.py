"""The HTTP proxy with its span work in a worker process: same spans as in-process, survives the worker dying."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp_test_support import flush, real_redactor_available
from toolwatch.instrumentation import semconv as sc
from toolwatch.instrumentation.mcp_client import TRACER_NAME
from toolwatch.instrumentation.proxy.http import HttpProxy
from toolwatch.instrumentation.proxy.tracker import ProxyStats
from toolwatch.instrumentation.proxy.worker import WorkerOptions

from toolwatch.demo.servers import SECRET_AWS_KEY, SECRET_NOTE, build_notes_server, serve_http

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.skipif(not real_redactor_available(), reason="the worker builds the real Redactor")]
KEY = "5f" * 32
CALLS = [("read_note", {"name": SECRET_NOTE}), ("list_notes", {}), ("read_note", {"name": "missing"}),
         ("search_notes", {"query": "pr"}), ("write_note", {"name": "k", "text": "key AKIAIOSFODNN7EXAMPLE"})]
VARYING = {sc.MCP_SESSION_ID, sc.SERVER_PORT}
"""Attributes that differ between two runs of the same session (a new session, a new server each time)."""


def worker_proxy(upstream: str, sink_url: str, stats: ProxyStats, **kw) -> HttpProxy:
    return HttpProxy(upstream, stats=stats, agent_id="research-1", agent_name="Researcher",
                     worker=WorkerOptions(otlp_endpoint=sink_url, **kw))


async def run_session(url: str) -> list[str]:
    async with streamable_http_client(url) as (r, w):
        async with ClientSession(r, w) as session:
            out = [(await session.initialize()).model_dump_json(), (await session.list_tools()).model_dump_json()]
            for name, args in CALLS:
                out.append((await session.call_tool(name, args)).model_dump_json())
            return out


def comparable(spans) -> list[tuple[str, int, str, dict]]:
    return sorted((s.name, s.status_code, s.status_message,
                   {k: v for k, v in s.attributes.items() if k not in VARYING}) for s in spans)


async def test_worker_spans_equal_in_process_spans(sink, provider, monkeypatch):
    from toolwatch.instrumentation.fingerprint import key_from_text
    from toolwatch.instrumentation.redact import Redactor

    monkeypatch.setenv("TOOLWATCH_FINGERPRINT_KEY", KEY)
    async with serve_http(build_notes_server()) as upstream:  # a fresh server per run: write_note changes it
        inline = HttpProxy(upstream, tracer=provider.get_tracer(TRACER_NAME), redactor=Redactor(key_from_text(KEY)),
                           stats=ProxyStats(), agent_id="research-1", agent_name="Researcher")
        local = await inline.start()
        try:
            expected_results = await run_session(local)
        finally:
            await inline.close()
        await flush(provider)
        expected = list(await sink.wait_for(lambda s: len(s) >= 1 + len(CALLS)))
        sink.spans.clear()

    async with serve_http(build_notes_server()) as upstream:
        stats = ProxyStats()
        proxy = worker_proxy(upstream, sink.url, stats)
        local = await proxy.start()
        try:
            results = await run_session(local)
        finally:
            await proxy.close()  # exports the worker's spans before it returns
    got = list(sink.spans)
    assert results == expected_results
    port = int(upstream.split(":")[2].split("/")[0])
    assert {s.attributes[sc.SERVER_PORT] for s in got} == {port}
    assert comparable(got) == comparable(expected)
    assert {s.resource.get("service.name") for s in got} == {"toolwatch-proxy"}
    assert stats.spans == len(got) and stats.dropped_observations == 0
    assert stats.messages == inline.stats.messages and stats.invalid_json == {"c2s": 0, "s2c": 0}
    assert all(SECRET_AWS_KEY.encode() not in body for body in sink.raw_bodies)


async def wait_until(predicate, timeout: float = 20.0, msg=lambda: "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out {msg()}"
        await asyncio.sleep(0.02)


async def test_killed_worker_is_restarted_and_spans_resume(sink, monkeypatch, capfd):
    monkeypatch.setenv("TOOLWATCH_FINGERPRINT_KEY", KEY)
    async with serve_http(build_notes_server()) as upstream:
        stats = ProxyStats()
        proxy = worker_proxy(upstream, sink.url, stats, restart_delay=0.5)
        local = await proxy.start()
        worker = proxy.worker
        assert worker is not None
        try:
            async with streamable_http_client(local) as (r, w):
                async with ClientSession(r, w) as session:
                    await session.initialize()
                    await session.call_tool("list_notes", {})
                    await wait_until(lambda: sink.named("tools/call list_notes"), msg=lambda: stats)
                    first_pid = worker.pid
                    os.kill(first_pid, signal.SIGKILL)
                    await wait_until(lambda: worker.restarts == 0 and not worker.running)
                    # the proxy keeps forwarding while there is no worker; these observations are dropped
                    dead = await session.call_tool("read_note", {"name": SECRET_NOTE})
                    assert dead.content and not dead.is_error
                    assert stats.dropped_observations >= 2
                    await wait_until(lambda: worker.restarts == 1 and worker.running)
                    assert worker.pid != first_pid
                    after = await session.call_tool("search_notes", {"query": "pr"})
                    assert after.content and not after.is_error
        finally:
            await proxy.close()
    names = [s.name for s in sink.spans]
    assert names.count("tools/call list_notes") == 1 and names.count("tools/call search_notes") == 1
    assert "tools/call read_note" not in names  # observed while no worker ran: dropped, not half-recorded
    err = capfd.readouterr().err
    assert f"span worker {first_pid} exited unexpectedly" in err and "restarting it" in err


async def test_a_stalled_worker_never_blocks_forwarding(sink, monkeypatch):
    """The worker stopped (SIGSTOP): calls still go through; past the bound observations are dropped and counted."""
    monkeypatch.setenv("TOOLWATCH_FINGERPRINT_KEY", KEY)
    big = "x" * 100_000  # a few of these fill the pipe: the proxy's writes must not wait for the worker
    async with serve_http(build_notes_server()) as upstream:
        stats = ProxyStats()
        proxy = worker_proxy(upstream, sink.url, stats, max_queue=8)
        local = await proxy.start()
        worker = proxy.worker
        assert worker is not None
        try:
            async with streamable_http_client(local) as (r, w):
                async with ClientSession(r, w) as session:
                    await session.initialize()
                    await session.call_tool("list_notes", {})
                    await wait_until(lambda: sink.named("tools/call list_notes"))
                    os.kill(worker.pid, signal.SIGSTOP)
                    try:
                        for k in range(12):
                            result = await asyncio.wait_for(
                                session.call_tool("write_note", {"name": f"n{k}", "text": big}), 10)
                            assert not result.is_error
                        assert stats.dropped_observations >= 12 * 2 - 8
                    finally:
                        os.kill(worker.pid, signal.SIGCONT)
                    dropped = stats.dropped_observations
                    await wait_until(lambda: worker._sent == worker._acked.get("done"))  # caught up
                    await session.call_tool("search_notes", {"query": "n1"})
        finally:
            await proxy.close()
    assert stats.dropped_observations == dropped and worker.restarts == 0
    assert len(sink.named("tools/call write_note")) <= 8 and sink.named("tools/call search_notes")


async def test_cli_proxy_exports_the_workers_spans_before_exiting_on_sigterm(sink, tmp_path):
    """``toolwatch proxy --listen`` as operators run it: SIGTERM, and the calls made are exported first."""
    from pathlib import Path

    from mcp_test_support import proxy_command

    port = free_port()
    async with serve_http(build_notes_server()) as upstream:
        env = {**os.environ, "TOOLWATCH_FINGERPRINT_KEY": KEY, "TOOLWATCH_PROXY_STATS": "1",
               "OTEL_BSP_SCHEDULE_DELAY": "60000"}  # nothing is exported before shutdown unless flushed
        err = tmp_path / "proxy.err"
        with err.open("wb") as err_file:
            proc = await asyncio.create_subprocess_exec(
                *proxy_command("--agent-id", "cli-agent", "--otlp-endpoint", sink.url,
                               "--listen", f"127.0.0.1:{port}", "--upstream", upstream),
                env=env, stderr=err_file)
            try:
                await wait_listening(port)
                workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
                assert len(workers) == 1
                results = await run_session(f"http://127.0.0.1:{port}/mcp")
                assert len(results) == 2 + len(CALLS)
            finally:
                proc.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0
    calls = [s for s in sink.spans if s.name.startswith("tools/call ")]
    assert len(calls) == len(CALLS) and {s.attributes[sc.GEN_AI_AGENT_ID] for s in calls} == {"cli-agent"}
    assert {s.attributes[sc.TW_SERVER_NAME] for s in sink.spans} == {"demo-notes"}
    text = err.read_text()
    assert f"spans={len(sink.spans)}, dropped observations=0" in text
    assert not Path(f"/proc/{workers[0]}").exists()  # the worker exited with the proxy
    assert KEY not in text


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            assert asyncio.get_running_loop().time() < deadline, "the proxy did not start listening"
            await asyncio.sleep(0.05)
