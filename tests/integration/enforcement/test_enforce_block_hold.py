"""A real MCP client -> the enforcing proxy -> the notes server, decided by a real daemon."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time

import pytest
import requests
from enforce_support import HOOK_SECRET, TOKEN, proxy_env
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp_test_support import demo_server, proxy_command

from toolwatch.collector.sinks.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from toolwatch.demo.servers import SECRET_AWS_KEY
from toolwatch.instrumentation.proxy.enforce import ERROR_CODES

pytestmark = pytest.mark.timeout(90)


def params(daemon, *extra: str) -> StdioServerParameters:
    base = f"http://127.0.0.1:{daemon.daemon.receiver('otlp_http').bound_port}"
    argv = proxy_command("--agent-id", "itest-agent", "--otlp-endpoint", base, "--enforce",
                         "--daemon-url", daemon.api_url, "--daemon-token", TOKEN, *extra, "--", *demo_server("notes"))
    return StdioServerParameters(command=argv[0], args=argv[1:], env=proxy_env())


def text_of(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def hold_messages(hooks) -> list:
    return [r for r in hooks.received if json.loads(r.body).get("type") == "toolwatch.hold"]


async def wait_hold(hooks, n: int) -> dict:
    for _ in range(300):
        got = hold_messages(hooks)
        if len(got) >= n:
            return got[n - 1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no hold webhook #{n} arrived")


def decide_hold(daemon, hold_id: str, verb: str) -> dict:
    r = requests.post(f"{daemon.api_url}/api/v1/holds/{hold_id}/{verb}",
                      headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


async def test_denied_calls_never_reach_the_server_and_become_findings(daemon, hooks):
    with tempfile.TemporaryFile("w+") as errlog:
        async with stdio_client(params(daemon), errlog=errlog) as (r, w):
            async with ClientSession(r, w, read_timeout_seconds=20) as session:
                await session.initialize()
                await session.list_tools()
                assert "secret" not in text_of(await session.call_tool("list_notes", {}))
                with pytest.raises(MCPError) as by_tool:
                    await session.call_tool("search_notes", {"query": "x"})
                with pytest.raises(MCPError) as by_secret:
                    await session.call_tool("write_note", {"name": "leak", "text": f"key {SECRET_AWS_KEY}"})
                missing = await session.call_tool("read_note", {"name": "leak"})
        errlog.seek(0)
        log = errlog.read()
    assert by_tool.value.error.code == ERROR_CODES["denied"]
    assert "not permitted by policy" in by_tool.value.error.data["advice"]
    assert "denied for 'itest-agent'" in by_tool.value.error.message
    assert by_secret.value.error.data["rule"].startswith("arguments[0].deny_patterns")
    assert SECRET_AWS_KEY not in by_secret.value.error.message
    # the write was refused before the server: the note does not exist, and no hold was opened
    assert missing.is_error and "no note named 'leak'" in text_of(missing)
    assert hold_messages(hooks) == []
    assert "denied=2" in log
    # every block is a span and a finding (the daemon's policy detector on the proxy's span)
    deadline = time.time() + 20
    while time.time() < deadline:
        daemon.drain()
        alerts = daemon.daemon.store.list_alerts(detector="policy", limit=50)
        if len({a.finding["tool"] for a in alerts}) >= 2:
            break
        await asyncio.sleep(0.1)
    assert {a.finding["tool"] for a in alerts} >= {"search_notes", "write_note"}


async def test_held_call_proceeds_after_approval_and_fails_after_denial_or_timeout(daemon, hooks):
    async with stdio_client(params(daemon, "--hold-timeout", "2")) as (r, w):
        async with ClientSession(r, w, read_timeout_seconds=20) as session:
            await session.initialize()
            await session.list_tools()
            approved = asyncio.create_task(session.call_tool("write_note", {"name": "a", "text": "mail ann@example.com"}))
            hook = await wait_hold(hooks, 1)
            # while the call waits, other traffic flows
            assert "todo" in text_of(await session.call_tool("list_notes", {}))
            body = json.loads(hook.body)
            assert verify(HOOK_SECRET.encode(), hook.headers[TIMESTAMP_HEADER], hook.body,
                          hook.headers[SIGNATURE_HEADER], now=time.time())
            assert b"ann@example.com" not in hook.body and body["hold"]["tool"] == "write_note"
            assert body["approve"]["url"].endswith(f"/api/v1/holds/{body['hold']['id']}/approve")
            assert not approved.done()
            decide_hold(daemon, body["hold"]["id"], "approve")
            assert "saved a" in text_of(await asyncio.wait_for(approved, 10))
            assert "mail" in text_of(await session.call_tool("read_note", {"name": "a"}))

            denied = asyncio.create_task(session.call_tool("write_note", {"name": "b", "text": "x"}))
            hook = await wait_hold(hooks, 2)
            decide_hold(daemon, json.loads(hook.body)["hold"]["id"], "deny")
            with pytest.raises(MCPError) as refused:
                await asyncio.wait_for(denied, 10)
            assert refused.value.error.code == ERROR_CODES["hold_denied"]
            assert "denied by an operator" in refused.value.error.message

            started = time.monotonic()
            with pytest.raises(MCPError) as timed_out:
                await session.call_tool("write_note", {"name": "c", "text": "y"})
            assert 1.5 < time.monotonic() - started < 10
            assert "not decided within 2 s (default: deny)" in timed_out.value.error.message
            for name in ("b", "c"):
                assert (await session.call_tool("read_note", {"name": name})).is_error
    late = requests.post(f"{daemon.api_url}/api/v1/holds/{json.loads(hook.body)['hold']['id']}/approve",
                         headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert late.status_code == 409
