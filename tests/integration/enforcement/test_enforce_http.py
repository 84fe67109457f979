"""Enforcement over streamable HTTP: a real MCP client -> the enforcing HTTP proxy -> a real MCP server,
decided by a real daemon (or by the fail mode when the daemon is down)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from contextlib import asynccontextmanager

import pytest
import requests
from enforce_support import HOOK_SECRET, TOKEN, closed_port_url, proxy_env
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_test_support import make_redactor, proxy_command
from procs import free_port

from toolwatch.collector.sinks.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from toolwatch.demo.servers import POISONED_DESCRIPTION, SECRET_AWS_KEY, build_notes_server, build_web_server, serve_http
from toolwatch.instrumentation import semconv as sc
from toolwatch.instrumentation.mcp_client import TRACER_NAME, setup_tracing
from toolwatch.instrumentation.proxy.decisions import DecisionClient, EnforceOptions
from toolwatch.instrumentation.proxy.enforce import ERROR_CODES
from toolwatch.instrumentation.proxy.enforce_http import HttpEnforcement
from toolwatch.instrumentation.proxy.http import HttpProxy
from toolwatch.instrumentation.proxy.tracker import ProxyStats

pytestmark = pytest.mark.timeout(90)


@asynccontextmanager
async def enforcing_proxy(server, otlp_url: str, agent_id: str, **options):
    """The notes/web server over HTTP behind an enforcing HttpProxy; yields (proxy URL, decision client, log)."""
    log: list[str] = []
    provider = setup_tracing("itest-http", endpoint=otlp_url, environ={})
    redactor = make_redactor()
    client = DecisionClient(EnforceOptions(**options), log=log.append)
    async with serve_http(server) as upstream:
        proxy = HttpProxy(upstream, tracer=provider.get_tracer(TRACER_NAME), redactor=redactor, stats=ProxyStats(),
                          agent_id=agent_id, enforcement=HttpEnforcement(client, redactor))
        url = await proxy.start()
        try:
            yield url, client, log
        finally:
            await proxy.close()
            await asyncio.to_thread(provider.shutdown)


@asynccontextmanager
async def mcp_session(url: str, **kw):
    async with streamable_http_client(url) as (r, w):
        async with ClientSession(r, w, read_timeout_seconds=20, **kw) as session:
            await session.initialize()
            yield session


def daemon_options(daemon, **extra) -> dict:
    """The decision client's options for the test daemon.

    ``timeout_s``: the daemon runs in this process, sharing its interpreter lock with the proxy,
    the MCP server and client and the span exporter; on a loaded machine a decision took up to
    0.9 s against the 0.5 s production budget, and the proxy then (rightly) fails open for a
    second, e.g. showing a quarantined tool. These tests are about enforcement, not that budget
    (the fail modes have their own test below)."""
    return {"daemon_url": daemon.api_url, "token": TOKEN, "timeout_s": 5.0, **extra}


def text_of(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def hold_messages(hooks) -> list:
    return [r for r in hooks.received if json.loads(r.body).get("type") == "toolwatch.hold"]


async def wait_hold(hooks, n: int):
    for _ in range(300):
        got = hold_messages(hooks)
        if len(got) >= n:
            return got[n - 1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no hold webhook #{n} arrived")


async def decide_hold(daemon, hold_id: str, verb: str) -> None:
    r = await asyncio.to_thread(requests.post, f"{daemon.api_url}/api/v1/holds/{hold_id}/{verb}",
                                headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert r.status_code == 200, r.text


async def test_http_denied_calls_never_reach_the_server_and_become_findings(daemon, hooks):
    async with enforcing_proxy(build_notes_server(), daemon.otlp_http_url.removesuffix("/v1/traces"), "itest-agent",
                               **daemon_options(daemon)) as (url, client, _):
        async with mcp_session(url) as session:
            await session.list_tools()
            assert "secret" not in text_of(await session.call_tool("list_notes", {}))
            with pytest.raises(MCPError) as by_tool:
                await session.call_tool("search_notes", {"query": "x"})
            with pytest.raises(MCPError) as by_secret:
                await session.call_tool("write_note", {"name": "leak", "text": f"key {SECRET_AWS_KEY}"})
            missing = await session.call_tool("read_note", {"name": "leak"})
    assert by_tool.value.error.code == ERROR_CODES["denied"]
    assert "denied for 'itest-agent'" in by_tool.value.error.message
    assert by_secret.value.error.data["rule"].startswith("arguments[0].deny_patterns")
    assert SECRET_AWS_KEY not in by_secret.value.error.message
    assert missing.is_error and "no note named 'leak'" in text_of(missing)
    assert hold_messages(hooks) == [] and client.stats.denied == 2
    deadline = time.time() + 20
    while time.time() < deadline:
        daemon.drain()
        alerts = daemon.daemon.store.list_alerts(detector="policy", limit=50)
        if len({a.finding["tool"] for a in alerts}) >= 2:
            break
        await asyncio.sleep(0.1)
    assert {a.finding["tool"] for a in alerts} >= {"search_notes", "write_note"}


async def test_http_held_call_waits_then_proceeds_or_fails_cleanly(daemon, hooks):
    async with enforcing_proxy(build_notes_server(), daemon.otlp_http_url.removesuffix("/v1/traces"), "itest-agent",
                               **daemon_options(daemon, hold_timeout_s=2.0)) as (url, _, _):
        async with mcp_session(url) as session:
            await session.list_tools()
            approved = asyncio.create_task(session.call_tool("write_note", {"name": "a", "text": "mail ann@example.com"}))
            hook = await wait_hold(hooks, 1)
            assert "todo" in text_of(await session.call_tool("list_notes", {}))  # other calls flow meanwhile
            body = json.loads(hook.body)
            assert verify(HOOK_SECRET.encode(), hook.headers[TIMESTAMP_HEADER], hook.body,
                          hook.headers[SIGNATURE_HEADER], now=time.time())
            assert b"ann@example.com" not in hook.body and body["hold"]["tool"] == "write_note"
            assert not approved.done()
            await decide_hold(daemon, body["hold"]["id"], "approve")
            assert "saved a" in text_of(await asyncio.wait_for(approved, 10))
            assert "mail" in text_of(await session.call_tool("read_note", {"name": "a"}))

            denied = asyncio.create_task(session.call_tool("write_note", {"name": "b", "text": "x"}))
            hook = await wait_hold(hooks, 2)
            await decide_hold(daemon, json.loads(hook.body)["hold"]["id"], "deny")
            with pytest.raises(MCPError) as refused:
                await asyncio.wait_for(denied, 10)

            started = time.monotonic()
            with pytest.raises(MCPError) as timed_out:
                await session.call_tool("write_note", {"name": "c", "text": "y"})
            waited = time.monotonic() - started
            for name in ("b", "c"):
                assert (await session.call_tool("read_note", {"name": name})).is_error
    assert refused.value.error.code == ERROR_CODES["hold_denied"]
    assert "denied by an operator" in refused.value.error.message
    assert 1.5 < waited < 10
    assert "not decided within 2 s (default: deny)" in timed_out.value.error.message


async def test_http_quarantined_tool_disappears_and_reappears_with_list_changed(daemon):
    changed = asyncio.Event()

    async def on_message(message):
        if getattr(message, "method", None) == sc.METHOD_LIST_CHANGED:
            changed.set()

    rugpull = next(d for d in daemon.daemon.detectors if d.name == "rugpull")

    async def until(predicate, what: str):
        for _ in range(400):
            daemon.drain()
            value = predicate()
            if value:
                return value
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    async with enforcing_proxy(build_web_server(rug_pull_after=1), daemon.otlp_http_url.removesuffix("/v1/traces"), "itest-web",
                               **daemon_options(daemon, poll_s=0.1)) as (url, _, _):
        async with mcp_session(url, message_handler=on_message) as session:
            first = {t.name for t in (await session.list_tools()).tools}
            await until(lambda: "demo-web" in rugpull.pins(), "the first listing to be pinned")
            await session.call_tool("fetch", {"url": "https://news.example.com/today"})  # pulls the rug
            await asyncio.wait_for(changed.wait(), 10)  # the server's own notification, through the proxy
            changed.clear()
            during = {t.name for t in (await session.list_tools()).tools}
            with pytest.raises(MCPError) as refused:
                await session.call_tool("fetch", {"url": "https://news.example.com/today"})
            pending = await until(lambda: [p for p in rugpull.pending() if p["tool"] == "fetch"],
                                  "the changed definition to be pending")
            assert not changed.is_set()
            r = await asyncio.to_thread(requests.post, f"{daemon.api_url}/api/v1/approvals/{pending[0]['id']}/approve",
                                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
            assert r.status_code == 200, r.text
            await asyncio.wait_for(changed.wait(), 10)  # injected by the proxy on the session's GET stream
            after = {t.name: t.description for t in (await session.list_tools()).tools}
            assert text_of(await session.call_tool("fetch", {"url": "https://news.example.com/today"}))
    assert first == {"fetch", "search"}
    assert during == {"search"}
    assert refused.value.error.code == ERROR_CODES["quarantined"]
    assert "approve" in refused.value.error.data["advice"]
    assert after["fetch"] == POISONED_DESCRIPTION


async def listening(port: int) -> None:
    for _ in range(400):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


LOCAL_POLICY = """\
policy:
  subjects:
    - agents: ["down-*"]
      deny_tools: ["search_notes"]
"""


async def test_http_daemon_down_applies_and_reports_the_fail_mode(sink, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(LOCAL_POLICY)

    async def run(**mode) -> tuple[list, str, str]:
        outcomes: list = []
        async with enforcing_proxy(build_notes_server(), sink.url, "down-agent", daemon_url=closed_port_url(),
                                   **mode) as (url, client, log):
            async with mcp_session(url) as session:
                await session.list_tools()
                for tool, args in (("list_notes", {}), ("search_notes", {"query": "a"})):
                    try:
                        outcomes.append((await session.call_tool(tool, args)).is_error)
                    except MCPError as exc:
                        outcomes.append(exc.error)
            return outcomes, "\n".join(log), client.stats.summary()

    (open_out, open_log, open_sum), (closed_out, closed_log, closed_sum), (local_out, local_log, local_sum) = \
        await asyncio.gather(run(), run(fail_closed=True), run(fail_closed=True, policy_file=str(policy)))

    assert open_out == [False, False]
    assert "FAIL-OPEN: calls are allowed WITHOUT enforcement" in open_log and "fail-open=2" in open_sum
    assert [e.code for e in closed_out] == [ERROR_CODES["unavailable"]] * 2
    assert closed_out[0].data["decidedBy"] == "fail-closed"
    assert "FAIL-CLOSED: calls are denied" in closed_log and "fail-closed=2" in closed_sum
    assert local_out[0] is False
    assert local_out[1].code == ERROR_CODES["denied"] and local_out[1].data["decidedBy"] == "local-policy"
    assert f"local policy file {policy}" in local_log and "local-policy=2" in local_sum


async def test_cli_http_proxy_enforces_and_reports_on_exit(sink):
    """``toolwatch proxy --enforce --listen ... --upstream ...`` end to end, as operators run it."""
    port = free_port()
    async with serve_http(build_notes_server()) as upstream:
        argv = proxy_command("--agent-id", "cli-agent", "--otlp-endpoint", sink.url, "--listen", f"127.0.0.1:{port}",
                             "--upstream", upstream, "--enforce", "--daemon-url", closed_port_url(), "--fail-closed")
        proc = await asyncio.create_subprocess_exec(*argv, env=proxy_env(), stderr=asyncio.subprocess.PIPE)
        try:
            await listening(port)
            async with mcp_session(f"http://127.0.0.1:{port}/mcp") as session:
                await session.list_tools()
                with pytest.raises(MCPError) as refused:
                    await session.call_tool("list_notes", {})
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 20)
    log = err.decode()
    assert refused.value.error.code == ERROR_CODES["unavailable"]
    assert "FAIL-CLOSED: calls are denied" in log and "degraded_decisions: fail-closed=1" in log
    assert proc.returncode == 0
