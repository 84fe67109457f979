"""The HTTP proxy's lean upstream client against scripted raw HTTP servers (framing, reuse, failures)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from toolwatch.instrumentation.proxy.upstream import UpstreamPool

pytestmark = pytest.mark.timeout(20)

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


async def serve(script: Script) -> tuple[asyncio.AbstractServer, UpstreamPool, list[int]]:
    """A raw server running ``script`` per connection; returns it, a pool to it and a connection counter."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await script(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went away or the test is over
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, UpstreamPool("http", "127.0.0.1", port), connections


async def body_of(response) -> bytes:
    async with response:
        return b"".join([chunk async for chunk in response.content.iter_any()])


async def test_chunked_sse_split_across_reads_is_dechunked_and_the_connection_reused():
    seen: list[tuple[bytes, bytes]] = []

    async def script(reader, writer):
        while True:
            seen.append(await read_request(reader))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-A: 1\r\nX-A: 2\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n1")
            await writer.drain()
            await asyncio.sleep(0.01)
            for piece in (b"c\r\nevent: message\r\ndata: {}\r\n\r\n\r\n", b"3;ext=1\r\nab", b"c\r\n0\r\nX-T: t\r\n\r\n"):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.01)

    server, pool, connections = await serve(script)
    try:
        for i in range(3):
            response = await pool.request("POST", "/mcp?x=%2F", [("Accept", "text/event-stream")], b'{"id":%d}' % i)
            assert response.status == 200 and response.reason == "OK" and response.content_length is None
            assert response.headers.getall("x-a") == ["1", "2"]
            assert await body_of(response) == b"event: message\r\ndata: {}\r\n\r\nabc"
    finally:
        await pool.close()
        server.close()
    assert len(connections) == 1  # kept alive
    head, body = seen[2]
    assert head.startswith(b"POST /mcp?x=%2F HTTP/1.1\r\nHost: 127.0.0.1:") and b"\r\nContent-Length: 8\r\n" in head
    assert body == b'{"id":2}'


async def test_content_length_close_delimited_and_bodiless_responses():
    answers = iter([
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"until\":\"close\"}",
    ])

    async def script(reader, writer):
        while True:
            await read_request(reader)
            answer = next(answers)
            writer.write(answer)
            await writer.drain()
            if b"Content-Length" not in answer and b"204" not in answer:
                return  # close-delimited: the end of the body is the end of the connection

    server, pool, connections = await serve(script)
    try:
        first = await pool.request("POST", "/", [], b"x")
        assert (first.status, first.content_length) == (200, 5) and await body_of(first) == b"hello"
        second = await pool.request("POST", "/", [], b"")
        assert second.status == 202 and await body_of(second) == b""
        third = await pool.request("DELETE", "/", [], b"")
        assert third.status == 204 and await body_of(third) == b""
        fourth = await pool.request("GET", "/", [], b"")
        assert await body_of(fourth) == b'{"until":"close"}'
    finally:
        await pool.close()
        server.close()
    assert len(connections) == 1


async def test_an_idle_connection_closed_by_the_upstream_is_replaced_transparently():
    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # then close the kept-alive connection while the pool holds it idle

    server, pool, connections = await serve(script)
    try:
        assert await body_of(await pool.request("POST", "/", [], b"1")) == b"ok"
        await asyncio.sleep(0.05)
        assert await body_of(await pool.request("POST", "/", [], b"2")) == b"ok"
    finally:
        await pool.close()
        server.close()
    assert len(connections) == 2


async def test_upstream_breaking_off_mid_body_raises_a_payload_error():
    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        await writer.drain()
        await asyncio.sleep(0.02)

    server, pool, _ = await serve(script)
    try:
        response = await pool.request("POST", "/", [], b"x")
        got = []
        with pytest.raises(aiohttp.ClientPayloadError):
            async with response:
                async for chunk in response.content.iter_any():
                    got.append(chunk)
        assert got == [b"hel"]
    finally:
        await pool.close()
        server.close()


async def test_unreachable_and_garbage_upstreams_raise_client_errors():
    pool = UpstreamPool("http", "127.0.0.1", 9)
    with pytest.raises(aiohttp.ClientConnectorError, match="Cannot connect to host 127.0.0.1:9"):
        await pool.request("POST", "/", [], b"x")

    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)

    server, pool, _ = await serve(script)
    try:
        with pytest.raises(aiohttp.ClientError, match="invalid upstream status line"):
            await pool.request("POST", "/", [], b"x")
    finally:
        await pool.close()
        server.close()


async def test_server_closing_before_answering_a_fresh_connection_is_a_disconnect():
    async def script(reader, writer):
        await read_request(reader)

    server, pool, _ = await serve(script)
    try:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await pool.request("POST", "/", [], b"x")
    finally:
        await pool.close()
        server.close()
