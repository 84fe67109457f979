"""Proxy overhead: latency added per tools/call (p50/p99) and calls/s, proxy vs. direct.

Both paths run in the same process run, with calls alternating between a direct session and a
proxied one so machine load hits both alike. stdio: a real MCP client -> (toolwatch proxy ->)
the demo notes server subprocess; the proxy exports its spans over OTLP/HTTP to an in-process
receiver, so span building and export are part of what is measured. HTTP: the same through
the streamable HTTP proxy, with server and proxy in their own processes.

    .venv/bin/python bench/proxy_overhead.py [--calls 400] [--transport stdio|http|both]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from otlp_sink import OtlpSink  # noqa: E402

ARGS = {"name": "todo"}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def alternate(direct: ClientSession, proxied: ClientSession, calls: int) -> tuple[list[float], list[float]]:
    for s in (direct, proxied):  # warm-up
        for _ in range(20):
            await s.call_tool("read_note", ARGS)
    d, p = [], []
    for i in range(calls):
        order = ((direct, d), (proxied, p)) if i % 2 else ((proxied, p), (direct, d))
        for session, out in order:
            t0 = time.perf_counter()
            await session.call_tool("read_note", ARGS)
            out.append((time.perf_counter() - t0) * 1e3)
    return d, p


async def throughput(session: ClientSession, seconds: float = 2.0) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        await session.call_tool("read_note", ARGS)
        n += 1
    return n / (time.perf_counter() - t0)


def report(name: str, d: list[float], p: list[float], d_rate: float, p_rate: float) -> None:
    added = [b - a for a, b in zip(d, p, strict=True)]
    print(f"\n[{name}] {len(d)} calls each, alternating")
    print(f"  direct  p50 {pct(d, .5):7.3f} ms  p99 {pct(d, .99):7.3f} ms  {d_rate:8.1f} calls/s")
    print(f"  proxied p50 {pct(p, .5):7.3f} ms  p99 {pct(p, .99):7.3f} ms  {p_rate:8.1f} calls/s")
    print(f"  added   p50 {pct(p, .5) - pct(d, .5):7.3f} ms  p99 {pct(p, .99) - pct(d, .99):7.3f} ms  "
          f"(median of paired differences {statistics.median(added):.3f} ms)  target: < 1 ms p50")


async def bench_stdio(calls: int, sink: OtlpSink) -> None:
    server = [sys.executable, "-m", "toolwatch.demo.servers", "notes"]
    proxy = [sys.executable, "-m", "toolwatch.instrumentation.proxy", "--agent-id", "bench",
             "--otlp-endpoint", sink.url, "--", *server]
    env = {**os.environ, "TOOLWATCH_FINGERPRINT_KEY": "bench-key"}
    direct_p = StdioServerParameters(command=server[0], args=server[1:], env=env)
    proxy_p = StdioServerParameters(command=proxy[0], args=proxy[1:], env=env)
    async with stdio_client(direct_p) as (r1, w1), stdio_client(proxy_p) as (r2, w2):
        async with ClientSession(r1, w1) as direct, ClientSession(r2, w2) as proxied:
            await direct.initialize()
            await proxied.initialize()
            d, p = await alternate(direct, proxied, calls)
            d_rate, p_rate = await throughput(direct), await throughput(proxied)
    report("stdio", d, p, d_rate, p_rate)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def bench_http(calls: int, sink: OtlpSink) -> None:
    """Server and proxy in their own processes, as deployed; the client here."""
    server_port, proxy_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{server_port}/mcp"
    env = {**os.environ, "TOOLWATCH_FINGERPRINT_KEY": "bench-key"}
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "toolwatch.demo.servers", "notes", "--http", f"127.0.0.1:{server_port}",
        env=env, stderr=asyncio.subprocess.DEVNULL)
    proxy = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "toolwatch.instrumentation.proxy", "--agent-id", "bench", "--otlp-endpoint", sink.url,
        "--listen", f"127.0.0.1:{proxy_port}", "--upstream", upstream, env=env, stderr=asyncio.subprocess.DEVNULL)
    try:
        await wait_listening(server_port)
        await wait_listening(proxy_port)
        local = f"http://127.0.0.1:{proxy_port}/mcp"
        async with streamable_http_client(upstream) as (r1, w1), streamable_http_client(local) as (r2, w2):
            async with ClientSession(r1, w1) as direct, ClientSession(r2, w2) as proxied:
                await direct.initialize()
                await proxied.initialize()
                d, p = await alternate(direct, proxied, calls)
                d_rate, p_rate = await throughput(direct), await throughput(proxied)
    finally:
        for proc in (proxy, server):
            proc.terminate()
            await proc.wait()
    report("streamable HTTP (server, proxy, client in 3 processes)", d, p, d_rate, p_rate)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--transport", choices=("stdio", "http", "both"), default="both")
    args = parser.parse_args()
    sink = await OtlpSink().start()
    try:
        if args.transport in ("stdio", "both"):
            await bench_stdio(args.calls, sink)
        if args.transport in ("http", "both"):
            await bench_http(args.calls, sink)
        print(f"\nspans received by the OTLP sink: {len(sink.spans)}")
    finally:
        await sink.stop()


if __name__ == "__main__":
    asyncio.run(main())
