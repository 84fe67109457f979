"""The streamable HTTP proxy between a real MCP client and a real MCP server over HTTP."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp_test_support import flush
from toolwatch.instrumentation import semconv as sc
from toolwatch.instrumentation.mcp_client import TRACER_NAME
from toolwatch.instrumentation.proxy.http import HttpProxy
from toolwatch.instrumentation.proxy.tracker import ProxyStats

from toolwatch.demo.servers import SECRET_AWS_KEY, SECRET_NOTE, build_notes_server, build_web_server, serve_http

pytestmark = pytest.mark.timeout(60)


def make_proxy(upstream: str, provider, redactor, **kw) -> HttpProxy:
    return HttpProxy(upstream, tracer=provider.get_tracer(TRACER_NAME), redactor=redactor, stats=ProxyStats(),
                     agent_id="research-1", agent_name="Researcher", **kw)


async def session_results(url: str) -> list[str]:
    async with streamable_http_client(url) as (r, w):
        async with ClientSession(r, w) as session:
            out = [(await session.initialize()).model_dump_json(), (await session.list_tools()).model_dump_json()]
            for name, args in [("read_note", {"name": SECRET_NOTE}), ("list_notes", {}),
                               ("read_note", {"name": "missing"}), ("search_notes", {"query": "pr"})]:
                out.append((await session.call_tool(name, args)).model_dump_json())
            return out


async def test_http_proxy_is_transparent_and_emits_spans(sink, provider, redactor):
    async with serve_http(build_notes_server()) as upstream:
        direct = await session_results(upstream)
        proxy = make_proxy(upstream, provider, redactor)
        local = await proxy.start()
        try:
            proxied = await session_results(local)
        finally:
            await proxy.close()
    assert proxied == direct
    await flush(provider)
    spans = await sink.wait_for(lambda s: len(s) >= 5)
    (listing,) = sink.named("tools/list")
    reads = sink.named("tools/call read_note")
    assert len(reads) == 2 and reads[1].attributes[sc.ERROR_TYPE] == "tool_error"
    port = int(upstream.split(":")[2].split("/")[0])
    for span in spans:
        a = span.attributes
        assert a[sc.TW_EMITTER] == "proxy" and a[sc.NETWORK_TRANSPORT] == "tcp" and a[sc.NETWORK_PROTOCOL_NAME] == "http"
        assert a[sc.SERVER_ADDRESS] == "127.0.0.1" and a[sc.SERVER_PORT] == port
        assert a[sc.TW_SERVER_NAME] == "demo-notes" and a[sc.GEN_AI_AGENT_ID] == "research-1"
        assert a[sc.MCP_SESSION_ID] == listing.attributes[sc.MCP_SESSION_ID] and a[sc.JSONRPC_REQUEST_ID]
    assert "secret" in reads[0].attributes[sc.TW_RESULT_LABELS]
    assert all(SECRET_AWS_KEY.encode() not in body for body in sink.raw_bodies)
    assert proxy.stats.invalid_json == {"c2s": 0, "s2c": 0}


async def test_rug_pull_notification_reaches_client_and_marks_next_listing(sink, provider, redactor):
    changed = asyncio.Event()

    async def on_message(message):
        if getattr(message, "method", None) == sc.METHOD_LIST_CHANGED:
            changed.set()

    async with serve_http(build_web_server(rug_pull_after=1)) as upstream:
        proxy = make_proxy(upstream, provider, redactor)
        local = await proxy.start()
        try:
            async with streamable_http_client(local) as (r, w):
                async with ClientSession(r, w, message_handler=on_message) as session:
                    await session.initialize()
                    before = await session.list_tools()
                    await session.call_tool("fetch", {"url": "https://news.example.com/today"})
                    await asyncio.wait_for(changed.wait(), 10)
                    after = await session.list_tools()
        finally:
            await proxy.close()
    desc = {t.name: t.description for t in before.tools}, {t.name: t.description for t in after.tools}
    assert desc[0]["fetch"] != desc[1]["fetch"] and "IMPORTANT" in desc[1]["fetch"]
    await flush(provider)
    await sink.wait_for(lambda s: len([x for x in s if x.name == "tools/list"]) >= 2)
    first, second = sink.named("tools/list")
    assert first.attributes[sc.TW_TOOLS_AFTER_LIST_CHANGED] is False
    assert second.attributes[sc.TW_TOOLS_AFTER_LIST_CHANGED] is True
    assert first.attributes[sc.TW_TOOLS_DEFINITION_SHA256] != second.attributes[sc.TW_TOOLS_DEFINITION_SHA256]


async def test_unreachable_upstream_answers_with_jsonrpc_error(provider, redactor):
    proxy = make_proxy("http://127.0.0.1:9/mcp", provider, redactor)
    local = await proxy.start()
    try:
        async with aiohttp.ClientSession() as http:
            body = {"jsonrpc": "2.0", "id": 7, "method": "tools/list"}
            async with http.post(local, json=body, timeout=aiohttp.ClientTimeout(total=15)) as resp:
                assert resp.status == 502
                answer = json.loads(await resp.read())
    finally:
        await proxy.close()
    assert answer["id"] == 7 and "unreachable" in answer["error"]["message"]


async def test_request_body_over_the_limit_is_refused_clearly(provider, redactor):
    async with serve_http(build_notes_server()) as upstream:
        proxy = make_proxy(upstream, provider, redactor, max_message_bytes=1024)
        local = await proxy.start()
        try:
            async with aiohttp.ClientSession() as http:
                body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                        "params": {"name": "write_note", "arguments": {"name": "x", "text": "y" * 5000}}}
                async with http.post(local, json=body) as resp:
                    assert resp.status == 413
                    assert "--max-message-bytes" in (await resp.json())["error"]["message"]
        finally:
            await proxy.close()
    assert proxy.stats.oversized["c2s"] == 1


async def test_upstream_dying_mid_stream_answers_open_requests_on_the_sse_stream(sink, provider, redactor):
    from aiohttp import web

    async def dying(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b": keep-alive comment\n\n")
        request.transport.close()  # the server process "crashes" before answering
        return response

    app = web.Application()
    app.router.add_post("/mcp", dying)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    proxy = make_proxy(f"http://127.0.0.1:{port}/mcp", provider, redactor)
    local = await proxy.start()
    try:
        async with aiohttp.ClientSession() as http:
            body = {"jsonrpc": "2.0", "id": 11, "method": "tools/call", "params": {"name": "slow", "arguments": {}}}
            async with http.post(local, json=body, timeout=aiohttp.ClientTimeout(total=15)) as resp:
                stream = await resp.read()
    finally:
        await proxy.close()
        await runner.cleanup()
    events = [line[len(b"data: "):] for line in stream.split(b"\n") if line.startswith(b"data: ")]
    (answer,) = [json.loads(e) for e in events]
    assert answer["id"] == 11 and "broke off the response" in answer["error"]["message"]
    await flush(provider)
    await sink.wait_for(lambda s: len(s) >= 1)
    (span,) = sink.named("tools/call slow")
    assert span.attributes[sc.ERROR_TYPE] == "server_exited"


async def test_2026_protocol_client_through_the_proxy(sink, provider, redactor):
    """``mcp.Client`` in its default mode speaks 2026-07-28 (server/discover, no initialize)."""
    from mcp import Client

    async def results(url: str) -> list[str]:
        async with Client(url) as client:
            assert client.protocol_version == "2026-07-28"
            return [(await client.call_tool(n, a)).model_dump_json()
                    for n, a in [("read_note", {"name": "todo"}), ("search_notes", {"query": "pr"})]]

    async with serve_http(build_notes_server()) as upstream:
        direct = await results(upstream)
        proxy = make_proxy(upstream, provider, redactor)
        local = await proxy.start()
        try:
            proxied = await results(local)
        finally:
            await proxy.close()
    assert proxied == direct
    await flush(provider)
    await sink.wait_for(lambda s: len([x for x in s if x.name.startswith("tools/call")]) >= 2)
    for span in sink.named("tools/call"):
        assert span.attributes[sc.TW_SERVER_NAME] == "demo-notes"
        assert span.attributes[sc.MCP_PROTOCOL_VERSION] == "2026-07-28"


async def test_unreachable_upstream_raw_client_gets_502_with_an_error_per_request_and_keep_alive(provider, redactor):
    """Over a raw socket: a batch gets one JSON-RPC error per id, and the connection stays usable."""
    proxy = make_proxy("http://127.0.0.1:9/mcp", provider, redactor)
    local = await proxy.start()
    port = int(local.split(":")[2].split("/")[0])
    body = json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                       {"jsonrpc": "2.0", "id": "b", "method": "ping"}]).encode()
    request = b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (
        len(body), body)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(2):
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
            assert head.startswith(b"HTTP/1.1 502 ") and b"Content-Type: application/json" in head
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            answer = json.loads(await reader.readexactly(length))
            assert [a["id"] for a in answer] == [1, "b"]
            assert all("unreachable" in a["error"]["message"] for a in answer)
    finally:
        writer.close()
        await proxy.close()
