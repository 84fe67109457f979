"""The HTTP proxy's listening side (listener.py) against raw sockets; responses are parsed by h11.

h11 (a pure-Python HTTP/1.1 implementation, already installed with the MCP SDK) is the reference
parser here: whatever framing the listener writes must read back the same through it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolwatch.instrumentation.proxy.listener import Listener, Request, Response, StreamResponse

pytestmark = pytest.mark.timeout(30)

Handler = Callable[[Request], Awaitable[StreamResponse]]


async def echo(request: Request) -> StreamResponse:
    """Tells what arrived: method, target, headers, body (hex), oversized."""
    info = {"method": request.method, "target": request.raw_path, "version": request.version,
            "headers": [list(kv) for kv in request.headers.items()], "body": request.body.hex(),
            "oversized": request.oversized}
    return Response(body=json.dumps(info).encode(), content_type="application/json")


class Client:
    """A raw client connection; responses are read back with h11."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.leftover = b""

    @classmethod
    async def open(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, *pieces: bytes, pause: float = 0.0) -> None:
        for piece in pieces:
            self.writer.write(piece)
            await self.writer.drain()
            if pause:
                await asyncio.sleep(pause)

    async def response(self, method: str = "POST", http10: bool = False) -> tuple[h11.Response, bytes]:
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")],
                              http_version="1.0" if http10 else "1.1"))
        conn.send(h11.EndOfMessage())
        if self.leftover:  # (an empty receive_data would mean EOF to h11)
            conn.receive_data(self.leftover)
        head, body = None, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(self.reader.read(65536), 10)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self.leftover = conn.trailing_data[0]
                assert head is not None
                return head, bytes(body)

    async def closed(self, timeout: float = 5.0) -> bool:
        """The server closed the connection (EOF) within ``timeout``."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except (asyncio.TimeoutError, ConnectionError):
            return False
        return data == b"" and not self.leftover

    def close(self) -> None:
        self.writer.close()


async def listening(handler: Handler = echo, **kw) -> tuple[Listener, int]:
    listener = Listener(handler, max_body=kw.pop("max_body", 1 << 20), **kw)
    return listener, await listener.start()


def post(body: bytes, target: str = "/mcp", extra: bytes = b"") -> bytes:
    return b"POST %b HTTP/1.1\r\nHost: x\r\n%bContent-Length: %d\r\n\r\n%b" % (target.encode(), extra, len(body), body)


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, pos, k = bytearray(), 0, 0
    while pos < len(body):
        size = sizes[k % len(sizes)]
        piece = body[pos:pos + size]
        out += b"%x\r\n%b\r\n" % (len(piece), piece)
        pos, k = pos + size, k + 1
    return bytes(out) + b"0\r\n\r\n"


def info(body: bytes) -> dict:
    return json.loads(body)


async def test_content_length_chunked_and_get_on_one_keep_alive_connection():
    listener, port = await listening()
    client = await Client.open(port)
    try:
        await client.send(post(b'{"a":1}', "/mcp?x=%20y", b"Mcp-Session-Id: s1\r\n"))
        head, body = await client.response()
        assert head.status_code == 200 and dict(head.headers)[b"content-type"] == b"application/json"
        got = info(body)
        assert got["method"] == "POST" and got["target"] == "/mcp?x=%20y" and bytes.fromhex(got["body"]) == b'{"a":1}'
        assert ["Mcp-Session-Id", "s1"] in got["headers"]
        payload = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
        await client.send(b"POST /mcp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                          chunked(payload, [5, 1, 30]), pause=0.01)
        head, body = await client.response()
        assert bytes.fromhex(info(body)["body"]) == payload
        await client.send(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = await client.response("GET")
        assert info(body)["method"] == "GET" and info(body)["body"] == ""
        assert len(listener._connections) == 1
    finally:
        client.close()
        await listener.close()


async def test_pipelined_requests_are_answered_in_order():
    async def slow_first(request: Request) -> StreamResponse:
        if request.body == b"1":
            await asyncio.sleep(0.05)
        return Response(body=request.body)

    listener, port = await listening(slow_first)
    client = await Client.open(port)
    try:
        await client.send(post(b"1") + post(b"2") + post(b"3"))
        assert [(await client.response())[1] for _ in range(3)] == [b"1", b"2", b"3"]
    finally:
        client.close()
        await listener.close()


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_oversized_body_is_dropped_and_flagged_and_the_connection_goes_on(framing):
    listener, port = await listening(max_body=100)
    client = await Client.open(port)
    big = b"x" * 1000
    try:
        if framing == "length":
            await client.send(post(big))
        else:
            await client.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(big, [64]))
        got = info((await client.response())[1])
        assert got["oversized"] is True and got["body"] == ""
        await client.send(post(b"y" * 100))
        got = info((await client.response())[1])
        assert got["oversized"] is False and bytes.fromhex(got["body"]) == b"y" * 100
    finally:
        client.close()
        await listener.close()


@pytest.mark.parametrize("raw, status", [
    (b"NOT HTTP AT ALL\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n", 400),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n", 431),
])
async def test_malformed_requests_get_a_clear_error_and_the_connection_closes(raw, status):
    called: list[Request] = []

    async def handler(request: Request) -> StreamResponse:
        called.append(request)
        return Response(body=b"no")

    listener, port = await listening(handler)
    client = await Client.open(port)
    try:
        await client.send(raw)
        head, body = await client.response("GET")
        assert head.status_code == status and body.startswith(str(status).encode())
        assert await client.closed() and not called
    finally:
        client.close()
        await listener.close()


async def test_idle_keep_alive_connections_are_closed_after_the_timeout():
    listener, port = await listening(keepalive_timeout=0.2)
    silent, used = await Client.open(port), await Client.open(port)
    try:
        await used.send(post(b"{}"))
        await used.response()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await used.closed() and await silent.closed()
        assert loop.time() - t0 < 2
        assert not listener._connections
    finally:
        silent.close()
        used.close()
        await listener.close()


async def test_a_connection_in_use_is_not_closed_by_the_idle_timeout():
    listener, port = await listening(keepalive_timeout=0.3)
    client = await Client.open(port)
    try:
        for _ in range(6):  # 0.6 s of traffic, each gap shorter than the timeout
            await asyncio.sleep(0.1)
            await client.send(post(b"{}"))
            await client.response()
    finally:
        client.close()
        await listener.close()


@pytest.mark.parametrize("partial", [b"POST /mcp HTTP/1.1\r\nHost: x\r\n", post(b"x" * 100)[:-50]])
async def test_a_slow_head_or_a_stalled_body_gets_408_and_is_closed(partial):
    listener, port = await listening(header_timeout=0.2)
    client = await Client.open(port)
    try:
        await client.send(partial)
        head, _ = await client.response()
        assert head.status_code == 408 and await client.closed()
    finally:
        client.close()
        await listener.close()


async def test_client_disconnecting_mid_body_never_reaches_the_handler():
    called: list[Request] = []

    async def handler(request: Request) -> StreamResponse:
        called.append(request)
        return Response(body=b"")

    listener, port = await listening(handler)
    client = await Client.open(port)
    await client.send(post(b"x" * 1000)[:-900])
    client.close()
    for _ in range(100):
        if not listener._connections:
            break
        await asyncio.sleep(0.01)
    assert not listener._connections and not called
    await listener.close()


async def test_streamed_response_chunks_reach_the_client_before_the_response_ends():
    release = asyncio.Event()

    async def stream(request: Request) -> StreamResponse:
        response = StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: message\ndata: 1\n\n")
        await release.wait()
        await response.write(b"event: message\ndata: 2\n\n")
        await response.write_eof()
        return response

    listener, port = await listening(stream)
    client = await Client.open(port)
    try:
        await client.send(post(b"{}"))
        first = await asyncio.wait_for(client.reader.readuntil(b"data: 1\n\n\r\n"), 5)
        assert b"Transfer-Encoding: chunked" in first and b"Content-Type: text/event-stream" in first
        client.leftover = first  # h11 reads the same bytes again, then the rest
        release.set()
        head, body = await client.response()
        assert body == b"event: message\ndata: 1\n\nevent: message\ndata: 2\n\n"
    finally:
        client.close()
        await listener.close()


async def test_writes_after_the_client_left_raise_connection_reset():
    gone = asyncio.Event()
    errors: list[BaseException] = []

    async def stream(request: Request) -> StreamResponse:
        response = StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b": hi\n\n")
        await gone.wait()
        try:
            for _ in range(100):
                await response.write(b": still here\n\n")
                await asyncio.sleep(0.01)
        except ConnectionResetError as exc:
            errors.append(exc)
            raise
        return response

    listener, port = await listening(stream)
    client = await Client.open(port)
    await client.send(post(b"{}"))
    await client.reader.readuntil(b": hi\n\n")
    client.close()
    gone.set()
    for _ in range(200):
        if errors and not listener._connections:
            break
        await asyncio.sleep(0.01)
    assert errors and not listener._connections
    await listener.close()


async def test_http10_client_gets_a_close_delimited_stream():
    async def stream(request: Request) -> StreamResponse:
        response = StreamResponse()
        await response.prepare(request)
        await response.write(b"abc")
        await response.write(b"def")
        return response  # the listener ends it

    listener, port = await listening(stream)
    client = await Client.open(port)
    try:
        await client.send(b"POST / HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        raw = await asyncio.wait_for(client.reader.read(), 5)  # to EOF: the end of the body
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 OK\r\n") and b"\r\nConnection: close" in head
        assert b"Transfer-Encoding" not in head and body == b"abcdef"
    finally:
        client.close()
        await listener.close()


async def test_expect_100_continue_is_answered_before_the_body_is_sent():
    listener, port = await listening()
    client = await Client.open(port)
    try:
        await client.send(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        assert await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
        await client.send(b"{}")
        assert bytes.fromhex(info((await client.response())[1])["body"]) == b"{}"
    finally:
        client.close()
        await listener.close()


async def test_handler_errors_and_header_injection_answer_500_and_the_listener_goes_on():
    async def handler(request: Request) -> StreamResponse:
        if request.body == b"boom":
            raise KeyError("boom")
        if request.body == b"inject":
            return Response(body=b"x", headers={"X-A": "a\nSet-Cookie: evil"})
        return Response(body=b"ok")

    listener, port = await listening(handler)
    client = await Client.open(port)
    try:
        for body in (b"boom", b"inject"):
            await client.send(post(body))
            head, answer = await client.response()
            assert head.status_code == 500 and b"evil" not in answer
            assert not any(k == b"set-cookie" for k, _ in head.headers)
        await client.send(post(b"fine"))
        assert (await client.response())[1] == b"ok"
    finally:
        client.close()
        await listener.close()


async def test_head_and_204_responses_have_no_body():
    async def handler(request: Request) -> StreamResponse:
        if request.method == "HEAD":
            response = StreamResponse(status=200)
            response.content_length = 42
            return response
        return StreamResponse(status=204)

    listener, port = await listening(handler)
    client = await Client.open(port)
    try:
        await client.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = await client.response("HEAD")
        assert (b"content-length", b"42") in head.headers and body == b""
        await client.send(b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = await client.response("DELETE")
        assert head.status_code == 204 and body == b"" and not client.leftover
    finally:
        client.close()
        await listener.close()


async def test_close_cancels_streams_that_outlive_the_grace_period():
    started = asyncio.Event()

    async def forever(request: Request) -> StreamResponse:
        response = StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b": open\n\n")
        started.set()
        await asyncio.sleep(3600)
        return response

    listener, port = await listening(forever)
    client = await Client.open(port)
    await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await started.wait()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await listener.close(grace=0.1)
    assert loop.time() - t0 < 2
    assert (await asyncio.wait_for(client.reader.read(), 5)).endswith(b": open\n\n\r\n")  # then EOF
    client.close()


@settings(max_examples=60, deadline=None)
@given(
    body=st.binary(max_size=3000),
    use_chunked=st.booleans(),
    chunk_sizes=st.lists(st.integers(1, 700), min_size=1, max_size=5),
    cuts=st.lists(st.integers(1, 400), min_size=1, max_size=6),
    writes=st.lists(st.integers(0, 900), min_size=1, max_size=5),
    length_known=st.booleans(),
    repeat=st.integers(1, 3),
)
def test_any_framing_and_any_split_reads_back_the_same_bodies(body, use_chunked, chunk_sizes, cuts, writes,
                                                             length_known, repeat):
    """Request bodies (length or chunked, cut anywhere) arrive whole; responses (written in any
    pieces, chunked or with a length) read back byte for byte through h11, request after request."""

    async def mirror(request: Request) -> StreamResponse:
        response = StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if length_known:
            response.content_length = len(request.body)
        await response.prepare(request)
        data, pos = request.body, 0
        for k in range(60):  # empty writes (size 0) must not end a chunked body
            if pos >= len(data):
                break
            size = writes[k % len(writes)]
            await response.write(data[pos:pos + size])
            pos += size
        await response.write(data[pos:])
        await response.write_eof()
        return response

    if use_chunked:
        raw = b"POST /mcp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body, chunk_sizes)
    else:
        raw = post(body)
    stream = raw * repeat
    pieces, pos, k = [], 0, 0
    while pos < len(stream):
        pieces.append(stream[pos:pos + cuts[k % len(cuts)]])
        pos, k = pos + cuts[k % len(cuts)], k + 1

    async def run() -> list[bytes]:
        listener, port = await listening(mirror)
        client = await Client.open(port)
        try:
            await client.send(*pieces)
            return [(await client.response())[1] for _ in range(repeat)]
        finally:
            client.close()
            await listener.close()

    assert asyncio.run(run()) == [body] * repeat


async def test_a_stream_head_is_sent_at_prepare_before_any_event():
    """A GET event stream may stay silent for minutes: its client must see the status at once."""
    release = asyncio.Event()

    async def silent(request: Request) -> StreamResponse:
        response = StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await release.wait()
        return response

    listener, port = await listening(silent)
    client = await Client.open(port)
    try:
        await client.send(b"GET /mcp HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"text/event-stream" in head
        release.set()
        assert await asyncio.wait_for(client.reader.readuntil(b"0\r\n\r\n"), 5) == b"0\r\n\r\n"
    finally:
        client.close()
        await listener.close()


@pytest.mark.parametrize("written", [b"abcd", b"abcdefghijKLMNOP"])
async def test_a_body_other_than_its_content_length_closes_the_connection(written):
    """A short body (the upstream broke off) or a long one: the client is never left waiting or misframed."""
    async def handler(request: Request) -> StreamResponse:
        response = StreamResponse()
        response.content_length = 10
        await response.prepare(request)
        await response.write(written)
        return response

    listener, port = await listening(handler)
    client = await Client.open(port)
    try:
        await client.send(post(b"{}"))
        raw = await asyncio.wait_for(client.reader.read(), 5)  # to EOF
        assert raw.partition(b"\r\n\r\n")[2] == written[:10]
    finally:
        client.close()
        await listener.close()


@pytest.mark.parametrize("split", [0, 5, 60])
async def test_an_upgrade_request_is_served_as_plain_http_with_its_body(split):
    """curl --http2 on http:// asks for h2c; as with aiohttp, the POST is served as is, and the
    connection goes on (a request pipelined right behind it is served too)."""
    listener, port = await listening()
    client = await Client.open(port)
    raw = post(b'{"jsonrpc":"2.0","id":1,"method":"ping"}', extra=b"Connection: Upgrade, HTTP2-Settings\r\n"
               b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n")
    cut = len(raw) - 40 + split if split else len(raw)
    try:
        await client.send(raw[:cut], raw[cut:] + post(b"next"), pause=0.02)
        head, body = await client.response()
        assert bytes.fromhex(info(body)["body"]) == b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
        assert bytes.fromhex(info((await client.response())[1])["body"]) == b"next"
    finally:
        client.close()
        await listener.close()


async def test_an_upgrade_request_with_a_chunked_body_is_refused():
    listener, port = await listening()
    client = await Client.open(port)
    try:
        await client.send(b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
        head, _ = await client.response()
        assert head.status_code == 400 and await client.closed()
    finally:
        client.close()
        await listener.close()


@pytest.mark.parametrize("split", [0, 7, 500])
async def test_an_oversized_upgrade_body_is_dropped_and_flagged_and_the_connection_goes_on(split):
    """An Upgrade request's body is read by length, outside the parser: past max_body it is not kept
    (a huge Content-Length must not fill memory), and the request behind it is still served."""
    listener, port = await listening(max_body=100)
    client = await Client.open(port)
    raw = post(b"x" * 1000, extra=b"Connection: Upgrade\r\nUpgrade: h2c\r\n")
    cut = len(raw) - 1000 + split if split else len(raw)
    try:
        await client.send(raw[:cut], raw[cut:] + post(b"next"), pause=0.02)
        got = info((await client.response())[1])
        assert got["oversized"] is True and got["body"] == ""
        got = info((await client.response())[1])
        assert got["oversized"] is False and bytes.fromhex(got["body"]) == b"next"
    finally:
        client.close()
        await listener.close()
