"""A/B check of the streamable HTTP proxy: the same raw requests through the proxy at git REF and
the working tree's; responses (status, headers, body) and exported spans must match.

    .venv/bin/python bench/proxy_http_ab.py [--ref main]

One demo notes server; two proxy processes (REF and working tree), each exporting to its own
OTLP sink. The same scripted exchanges go through both over raw sockets: MCP initialize,
notifications, tools/list, tool calls (a secret note, a missing one), a GET stream, DELETE,
an oversized body, another path, HEAD, invalid JSON, an h2c Upgrade POST. What legitimately differs is normalised:
``Date`` (and ``Server``, which aiohttp added to the proxy's own answers), the session id the server hands out, span ids/times. Exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))
sys.path.insert(0, str(ROOT / "bench"))

from otlp_sink import OtlpSink  # noqa: E402
from proxy_overhead import checkout, free_port, start_proxy, wait_listening  # noqa: E402

MAX = 4096
ACCEPT = "application/json, text/event-stream"


def rpc(i: int | None, method: str, params: dict | None = None) -> bytes:
    message: dict = {"jsonrpc": "2.0", "method": method}
    if i is not None:
        message["id"] = i
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode()


async def exchange(port: int, method: str, target: str, headers: dict[str, str], body: bytes,
                   until_eof: bool = False) -> bytes:
    """One request on its own connection (``Connection: close``): the raw response bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1",
             *([] if "Connection" in headers else ["Connection: close"]),
             *(f"{k}: {v}" for k, v in headers.items())]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    try:
        if until_eof:
            return await asyncio.wait_for(reader.read(), 10)
        got = b""
        while True:  # a stream or a kept-alive connection: what arrives until 1 s of silence
            try:
                data = await asyncio.wait_for(reader.read(65536), 1)
            except asyncio.TimeoutError:
                return got
            if not data:
                return got
            got += data
    finally:
        writer.close()


def normalise(raw: bytes, session: str | None) -> tuple[str, list[tuple[str, str]], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [(k.strip().lower(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:])]
    # aiohttp's server added "Server: Python/x aiohttp/y" to the proxy's own answers (413, 502)
    headers = [(k, v) for k, v in headers if k not in ("date", "server")]
    if session:
        headers = [(k, v.replace(session, "<session>")) for k, v in headers]
        body = body.replace(session.encode(), b"<session>")
    return lines[0], headers, body


async def script(port: int) -> list[tuple[str, list[tuple[str, str]], bytes]]:
    """The scripted exchanges against one proxy; normalised answers in order."""
    out = []
    base = {"Accept": ACCEPT, "Content-Type": "application/json"}
    raw = await exchange(port, "POST", "/mcp", base, rpc(1, "initialize", {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "ab", "version": "1"}}), True)
    found = re.search(rb"(?i)mcp-session-id: *([^\r\n]+)", raw)
    session = found.group(1).decode() if found else None
    out.append(normalise(raw, session))
    sess = {**base, "Mcp-Session-Id": session or "", "Mcp-Protocol-Version": "2025-06-18"}
    steps = [
        ("POST", "/mcp", sess, rpc(None, "notifications/initialized")),
        ("POST", "/mcp", sess, rpc(2, "tools/list")),
        ("POST", "/mcp", sess, rpc(3, "tools/call", {"name": "read_note", "arguments": {"name": "secret"}})),
        ("POST", "/mcp", sess, rpc(4, "tools/call", {"name": "read_note", "arguments": {"name": "missing"}})),
        ("POST", "/mcp", sess, rpc(5, "tools/call", {"name": "search_notes", "arguments": {"query": "pr"}})),
        ("POST", "/mcp", sess, b"{not json"),
        ("POST", "/mcp", sess, rpc(6, "tools/call", {"name": "write_note", "arguments": {"name": "x", "text": "y" * MAX}})),
        ("POST", "/", sess, rpc(7, "tools/list")),
        ("GET", "/.well-known/oauth-protected-resource", {}, b""),
        ("HEAD", "/mcp", sess, b""),
        ("POST", "/mcp", {**sess, "Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c",
                          "HTTP2-Settings": "AAMAAABkAAQCAAAAAAIAAAAA"}, rpc(8, "tools/list")),
    ]
    for method, target, headers, body in steps:
        out.append(normalise(await exchange(port, method, target, headers, body, "Connection" not in headers), session))
    out.append(normalise(await exchange(port, "GET", "/mcp", {**sess, "Accept": "text/event-stream"}, b""), session))
    out.append(normalise(await exchange(port, "DELETE", "/mcp", sess, b"", True), session))
    return out


def span_view(sink: OtlpSink) -> list[tuple[str, dict]]:
    skip = ("mcp.session.id",)
    return [(s.name, {k: v for k, v in sorted(s.attributes.items()) if k not in skip}) for s in sink.spans]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default="main")
    args = parser.parse_args()
    env = {**os.environ, "TOOLWATCH_FINGERPRINT_KEY": "ab-key"}
    server_port = free_port()
    upstream = f"http://127.0.0.1:{server_port}/mcp"
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "toolwatch.demo.servers", "notes", "--http", f"127.0.0.1:{server_port}",
        env=env, stderr=asyncio.subprocess.DEVNULL)
    sinks = [await OtlpSink().start(), await OtlpSink().start()]
    procs = [server]
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        try:
            extra = {**env}
            ref_proxy = await start_proxy(sinks[0], upstream, extra, checkout(args.ref, Path(tmp)),
                                          extra_args=["--max-message-bytes", str(MAX)])
            new_proxy = await start_proxy(sinks[1], upstream, extra, extra_args=["--max-message-bytes", str(MAX)])
            procs += [ref_proxy[0], new_proxy[0]]
            for port in (server_port, ref_proxy[1], new_proxy[1]):
                await wait_listening(port)
            answers = [await script(ref_proxy[1]), await script(new_proxy[1])]
            await asyncio.sleep(1.5)
        finally:
            for proc in reversed(procs):
                proc.terminate()
                await proc.wait()
    await asyncio.sleep(0.5)
    for k, (a, b) in enumerate(zip(*answers, strict=True)):
        same = a == b
        failed |= not same
        print(f"exchange {k:2d}: {'same' if same else 'DIFFERENT'}  {a[0]}")
        if not same:
            print(f"   {args.ref}: {a}\n   tree: {b}")
    spans = [span_view(s) for s in sinks]
    for s in sinks:
        await s.stop()
    print(f"spans: {len(spans[0])} ({args.ref}) vs {len(spans[1])} (tree): "
          f"{'same attributes' if spans[0] == spans[1] else 'DIFFERENT'}")
    if spans[0] != spans[1]:
        failed = True
        for x, y in zip(*spans):
            if x != y:
                print(f"   {args.ref}: {x}\n   tree: {y}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
