"""An upstream that closes an idle keep-alive connection just as the proxy reuses it costs the client
nothing: the request is sent again on a new connection, with and without enforcement.

Servers close idle connections on a timer (uvicorn after 5 s); a request written in the same instant
meets a closed socket. The enforcing proxy used to answer that with 502 "upstream unreachable":
test_enforce_http.py's quarantine test idles ~5 s (the span exporter's delay) between two
listings and failed so under load."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from enforce_support import closed_port_url
from mcp_test_support import make_redactor

from toolwatch.instrumentation.mcp_client import TRACER_NAME
from toolwatch.instrumentation.proxy.decisions import DecisionClient, EnforceOptions
from toolwatch.instrumentation.proxy.enforce_http import HttpEnforcement
from toolwatch.instrumentation.proxy.http import HttpProxy
from toolwatch.instrumentation.proxy.tracker import ProxyStats

pytestmark = pytest.mark.timeout(30)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return await reader.readexactly(length)


class ClosingUpstream:
    """Answers JSON-RPC requests with keep-alive, but closes its first connection, unanswered, when a
    second request arrives on it (its idle timer fired as the request came in)."""

    def __init__(self) -> None:
        self.connections = 0
        self.answered: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        first = self.connections == 1
        try:
            while True:
                body = await read_request(reader)
                if first and self.answered:
                    writer.transport.abort()
                    return
                self.answered.append(body)
                reply = json.dumps({"jsonrpc": "2.0", "id": json.loads(body)["id"], "result": {}}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                             % (len(reply), reply))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/mcp"

    def close(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.mark.parametrize("enforce", [False, True], ids=["plain", "enforcing"])
async def test_a_request_meeting_a_just_closed_keep_alive_connection_is_sent_again(provider, enforce):
    upstream = ClosingUpstream()
    redactor = make_redactor()
    enforcement = HttpEnforcement(DecisionClient(EnforceOptions(daemon_url=closed_port_url())), redactor) \
        if enforce else None
    proxy = HttpProxy(await upstream.start(), tracer=provider.get_tracer(TRACER_NAME), redactor=redactor,
                      stats=ProxyStats(), agent_id="a", enforcement=enforcement)
    url = await proxy.start()
    answers = []
    try:
        async with aiohttp.ClientSession() as client:
            for i in (1, 2):
                async with client.post(url, json={"jsonrpc": "2.0", "id": i, "method": "ping"}) as response:
                    answers.append((response.status, await response.json(content_type=None)))
    finally:
        await proxy.close()
        upstream.close()
    assert answers == [(200, {"jsonrpc": "2.0", "id": i, "result": {}}) for i in (1, 2)]
    assert [json.loads(b)["id"] for b in upstream.answered] == [1, 2] and upstream.connections == 2
