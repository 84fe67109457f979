"""A rug-pulled tool disappears from tools/list, its calls are refused, and it returns after approval."""

from __future__ import annotations

import asyncio

import pytest
import requests
from enforce_support import TOKEN, proxy_env
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp_test_support import demo_server, proxy_command

from toolwatch.demo.servers import POISONED_DESCRIPTION
from toolwatch.instrumentation import semconv as sc
from toolwatch.instrumentation.proxy.enforce import ERROR_CODES

pytestmark = pytest.mark.timeout(90)


def rugpull(daemon):
    return next(d for d in daemon.daemon.detectors if d.name == "rugpull")


async def until(predicate, daemon, what: str, timeout: float = 20.0):
    for _ in range(int(timeout / 0.05)):
        daemon.drain()
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_quarantined_tool_disappears_and_reappears_after_approval(daemon):
    changed = asyncio.Event()

    async def on_message(message):
        if getattr(message, "method", None) == sc.METHOD_LIST_CHANGED:
            changed.set()

    base = f"http://127.0.0.1:{daemon.daemon.receiver('otlp_http').bound_port}"
    argv = proxy_command("--agent-id", "itest-web", "--otlp-endpoint", base, "--enforce", "--daemon-url",
                         daemon.api_url, "--daemon-token", TOKEN, "--quarantine-poll", "0.1",
                         "--", *demo_server("web", "--rug-pull-after", "1"))
    async with stdio_client(StdioServerParameters(command=argv[0], args=argv[1:], env=proxy_env())) as (r, w):
        async with ClientSession(r, w, read_timeout_seconds=20, message_handler=on_message) as session:
            await session.initialize()
            first = {t.name for t in (await session.list_tools()).tools}
            await until(lambda: "demo-web" in rugpull(daemon).pins(), daemon, "the first listing to be pinned")
            await session.call_tool("fetch", {"url": "https://news.example.com/today"})  # pulls the rug
            await asyncio.wait_for(changed.wait(), 10)
            changed.clear()
            during = {t.name for t in (await session.list_tools()).tools}
            with pytest.raises(MCPError) as refused:
                await session.call_tool("fetch", {"url": "https://news.example.com/today"})
            assert "search" in {t.name for t in (await session.list_tools()).tools}
            pending = await until(lambda: [p for p in rugpull(daemon).pending() if p["tool"] == "fetch"],
                                  daemon, "the changed definition to be pending")
            assert not changed.is_set()
            r = await asyncio.to_thread(requests.post, f"{daemon.api_url}/api/v1/approvals/{pending[0]['id']}/approve",
                                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
            assert r.status_code == 200, r.text
            await asyncio.wait_for(changed.wait(), 10)  # the proxy tells the client to list again
            after = {t.name: t.description for t in (await session.list_tools()).tools}
            assert await session.call_tool("fetch", {"url": "https://news.example.com/today"})
    assert first == {"fetch", "search"}
    assert during == {"search"}
    assert refused.value.error.code == ERROR_CODES["quarantined"]
    assert "quarantined" in refused.value.error.message and "approve" in refused.value.error.data["advice"]
    assert after["fetch"] == POISONED_DESCRIPTION
