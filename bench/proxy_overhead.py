"""Proxy overhead: latency added per tools/call (p50/p99) and calls/s, proxy vs. direct.

Both paths run in the same process run, with calls alternating between a direct session and a
proxied one so machine load hits both alike. stdio: a real MCP client -> (toolwatch proxy ->)
the demo notes server subprocess; the proxy exports its spans over OTLP/HTTP to an in-process
receiver, so span building and export are part of what is measured. HTTP: the same through
the streamable HTTP proxy, with server and proxy in their own processes.

    .venv/bin/python bench/proxy_overhead.py [--calls 400] [--transport stdio|http|both] [--compare-ref main]
                                             [--hop-only]

``--compare-ref REF`` (HTTP) adds a second proxy built from ``instrumentation/`` at git REF (e.g.
``main``), alternating direct / REF proxy / working-tree proxy call by call, so old and new are
measured under the same load.

``--hop-only`` (HTTP) runs the proxies with span work off (``Recorder.submit`` does nothing: no
parsing, redaction, span building or export), to measure the forwarding hop alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
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


async def alternate(direct: ClientSession, *proxied: ClientSession, calls: int) -> list[list[float]]:
    """Latencies (ms) of ``calls`` calls per session, the sessions taking turns in rotating order."""
    sessions = (direct, *proxied)
    for s in sessions:  # warm-up
        for _ in range(20):
            await s.call_tool("read_note", ARGS)
    out: list[list[float]] = [[] for _ in sessions]
    for i in range(calls):
        for k in range(len(sessions)):
            j = (i + k) % len(sessions)
            t0 = time.perf_counter()
            await sessions[j].call_tool("read_note", ARGS)
            out[j].append((time.perf_counter() - t0) * 1e3)
    return out


async def throughput(session: ClientSession, seconds: float = 2.0) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        await session.call_tool("read_note", ARGS)
        n += 1
    return n / (time.perf_counter() - t0)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
            d, p = await alternate(direct, proxied, calls=calls)
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


def checkout(ref: str, into: Path) -> Path:
    """``instrumentation/`` at git ``ref`` as an importable ``toolwatch.instrumentation`` under ``into``."""
    package = into / "toolwatch"
    package.mkdir()
    (package / "__init__.py").write_text("")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "instrumentation"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(package)], input=archive, check=True)
    return into


HOP_ONLY = (
    "import sys; from toolwatch.instrumentation.proxy import tracker; "
    "tracker.Recorder.submit = lambda self, *a: None\n"
    "try:\n from toolwatch.instrumentation.proxy import worker\n"
    " worker.SpanWorker.submit = lambda self, *a: None\n"
    "except ImportError:\n pass\n"
    "from toolwatch.instrumentation.proxy.cli import main; sys.exit(main(sys.argv[1:]))"
)
"""The proxy's entry point with span work off (``--hop-only``); works on any ref that has ``Recorder``
(and turns the span worker's ``submit`` off where there is one)."""


def children_cpu_seconds(pid: int) -> float | None:
    """CPU of a process's children (the proxy's span worker), None when it has none."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    times = [cpu_seconds(int(k)) for k in kids]
    return sum(t for t in times if t is not None) if kids else None


async def start_proxy(sink: OtlpSink, upstream: str, env: dict[str, str], pythonpath: Path | None = None,
                      hop_only: bool = False, extra_args: list[str] | None = None):
    port = free_port()
    if pythonpath is not None:  # run there: ``-m``/``-c`` put the working directory first on sys.path
        env = {**env, "PYTHONPATH": str(pythonpath)}
    entry = ["-c", HOP_ONLY] if hop_only else ["-m", "toolwatch.instrumentation.proxy"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *entry, "--agent-id", "bench", "--otlp-endpoint", sink.url,
        "--listen", f"127.0.0.1:{port}", "--upstream", upstream, *(extra_args or []), env=env, stderr=asyncio.subprocess.DEVNULL,
        cwd=str(pythonpath or ROOT))
    return proc, port


async def bench_http(calls: int, sink: OtlpSink, compare_ref: str | None, hop_only: bool = False) -> None:
    """Server and proxy (or proxies) in their own processes, as deployed; the client here."""
    server_port = free_port()
    upstream = f"http://127.0.0.1:{server_port}/mcp"
    env = {**os.environ, "TOOLWATCH_FINGERPRINT_KEY": "bench-key"}
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "toolwatch.demo.servers", "notes", "--http", f"127.0.0.1:{server_port}",
        env=env, stderr=asyncio.subprocess.DEVNULL)
    procs = [server]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proxies = [await start_proxy(sink, upstream, env, hop_only=hop_only)]
            if compare_ref:
                proxies.insert(0, await start_proxy(sink, upstream, env, checkout(compare_ref, Path(tmp)), hop_only))
            procs += [proc for proc, _ in proxies]
            for port in (server_port, *(port for _, port in proxies)):
                await wait_listening(port)
            async with AsyncExitStack() as stack:
                sessions = []
                for url in (upstream, *(f"http://127.0.0.1:{port}/mcp" for _, port in proxies)):
                    r, w = await stack.enter_async_context(streamable_http_client(url))
                    session = await stack.enter_async_context(ClientSession(r, w))
                    await session.initialize()
                    sessions.append(session)
                cpu_before = [cpu_seconds(proc.pid) for proc, _ in proxies]
                kids_before = [children_cpu_seconds(proc.pid) for proc, _ in proxies]
                latencies = await alternate(*sessions, calls=calls)
                cpu_after = [cpu_seconds(proc.pid) for proc, _ in proxies]
                kids_after = [children_cpu_seconds(proc.pid) for proc, _ in proxies]
                rates = [await throughput(s) for s in sessions]
        finally:
            for proc in reversed(procs):
                proc.terminate()
                await proc.wait()
    title = "streamable HTTP (server, proxy, client in 3 processes)" + (", hop only (span work off)" if hop_only else "")
    names = [f"proxy at {compare_ref}", "proxy in the working tree"] if compare_ref else ["proxy"]
    for k, name in enumerate(names):
        report(f"{title}, {name}", latencies[0], latencies[k + 1], rates[0], rates[k + 1])
        before, after = cpu_before[k], cpu_after[k]
        if before is not None and after is not None:  # robust to machine load, unlike latency
            worker = kids_before[k] is not None and kids_after[k] is not None
            print(f"  proxy process CPU {1e3 * (after - before) / (calls + 20):.3f} ms per call "
                  + ("(forwarding only)" if hop_only else "(forwarding)" if worker
                     else "(all its threads: forwarding, span building, export)"))
            if worker:
                print(f"  span worker CPU   {1e3 * (kids_after[k] - kids_before[k]) / (calls + 20):.3f} ms per call "
                      "(parsing, redaction, span building, export)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--transport", choices=("stdio", "http", "both"), default="both")
    parser.add_argument("--compare-ref", metavar="REF", default=None,
                        help="HTTP: also run a proxy from instrumentation/ at this git ref, in the same run")
    parser.add_argument("--hop-only", action="store_true",
                        help="HTTP: span work off in the proxies (forwarding hop alone)")
    args = parser.parse_args()
    sink = await OtlpSink().start()
    try:
        if args.transport in ("stdio", "both"):
            await bench_stdio(args.calls, sink)
        if args.transport in ("http", "both"):
            await bench_http(args.calls, sink, args.compare_ref, args.hop_only)
        print(f"\nspans received by the OTLP sink: {len(sink.spans)}")
    finally:
        await sink.stop()


if __name__ == "__main__":
    asyncio.run(main())
