"""Enforcement overhead: the proxy's added latency per tools/call with enforcement on vs. off.

A toolwatch daemon runs as its own process on this host (policy detector on), and three
sessions to the demo notes server alternate calls: the plain proxy, the enforcing proxy with its
default decision cache (2 s TTL), and the enforcing proxy with the cache off (every call asks
the daemon); once over stdio, once over streamable HTTP. Then the decision itself is timed in
this process: ``DecisionClient.decide`` over its keep-alive connection, cached and uncached,
against a naive baseline that opens a new HTTP connection per decision and against the floor
of any aiohttp round trip on this host (a server that answers the same JSON without deciding);
and once more while the daemon ingests a steady stream of spans (``--span-rate``), so batches
hold its detectors while decisions arrive. Target: decision < 2 ms p99 with the daemon on the
same host.

    .venv/bin/python bench/enforcement_overhead.py [--calls 300] [--decisions 2000] [--span-rate 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402
from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from otlp_sink import OtlpSink  # noqa: E402
from proxy_overhead import free_port, pct, wait_listening  # noqa: E402

from toolwatch.instrumentation.proxy.decisions import DecisionClient, EnforceOptions  # noqa: E402

ARGS = {"name": "todo"}
TOKEN = "bench-token"
CONFIG = """\
listen: 127.0.0.1:{api}
otlp_http: 127.0.0.1:{otlp}
otlp_grpc: "off"
data_dir: {data}
api_token: {token}
log_level: warning
detectors:
  policy:
    subjects:
      - agents: ["*"]
        deny_tools: ["demo-notes/search_notes"]
    arguments:
      - tools: ["*"]
        deny_patterns: ["<secret:"]
"""


async def alternate(sessions: dict[str, ClientSession], calls: int) -> dict[str, list[float]]:
    for s in sessions.values():
        for _ in range(20):
            await s.call_tool("read_note", ARGS)
    out: dict[str, list[float]] = {k: [] for k in sessions}
    names = list(sessions)
    for i in range(calls):
        for name in names[i % len(names):] + names[:i % len(names)]:
            t0 = time.perf_counter()
            await sessions[name].call_tool("read_note", ARGS)
            out[name].append((time.perf_counter() - t0) * 1e3)
    return out


def report(title: str, times: dict[str, list[float]]) -> None:
    plain = times["plain proxy"]
    print(f"\n[end to end, {title}] {len(plain)} read_note calls per variant, alternating")
    for name, t in times.items():
        extra = "" if name == "plain proxy" else (
            f"  added vs plain: p50 {pct(t, .5) - pct(plain, .5):+7.3f} ms  p99 {pct(t, .99) - pct(plain, .99):+7.3f} ms")
        print(f"  {name:<20} p50 {pct(t, .5):7.3f} ms  p99 {pct(t, .99):7.3f} ms{extra}")


async def end_to_end_http(calls: int, api_url: str, otlp_url: str) -> None:
    """The same three variants over streamable HTTP: one notes server, three proxies in front of it."""
    server_port = free_port()
    upstream = f"http://127.0.0.1:{server_port}/mcp"
    env = {**os.environ, "TOOLWATCH_FINGERPRINT_KEY": "bench-key"}
    enforce = ["--enforce", "--daemon-url", api_url, "--daemon-token", TOKEN]
    variants = {"plain proxy": [], "enforce (cache 2 s)": enforce, "enforce (no cache)": enforce + ["--decision-ttl", "0"]}
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "toolwatch.demo.servers", "notes", "--http", f"127.0.0.1:{server_port}",
        stderr=asyncio.subprocess.DEVNULL)]
    urls = {}
    try:
        for name, extra in variants.items():
            port = free_port()
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "toolwatch.instrumentation.proxy", "--agent-id", "bench", "--otlp-endpoint",
                otlp_url, "--listen", f"127.0.0.1:{port}", "--upstream", upstream, *extra, env=env,
                stderr=asyncio.subprocess.DEVNULL))
            urls[name] = (port, f"http://127.0.0.1:{port}/mcp")
        await wait_listening(server_port)
        for port, _ in urls.values():
            await wait_listening(port)
        names = list(urls)
        async with streamable_http_client(urls[names[0]][1]) as (r0, w0), \
                streamable_http_client(urls[names[1]][1]) as (r1, w1), \
                streamable_http_client(urls[names[2]][1]) as (r2, w2):
            async with ClientSession(r0, w0) as s0, ClientSession(r1, w1) as s1, ClientSession(r2, w2) as s2:
                sessions = dict(zip(names, (s0, s1, s2), strict=True))
                for s in sessions.values():
                    await s.initialize()
                    await s.list_tools()
                times = await alternate(sessions, calls)
    finally:
        for p in procs:
            p.terminate()
            await p.wait()
    report("streamable HTTP", times)


async def end_to_end(calls: int, api_url: str, otlp_url: str) -> None:
    server = [sys.executable, "-m", "toolwatch.demo.servers", "notes"]
    base = [sys.executable, "-m", "toolwatch.instrumentation.proxy", "--agent-id", "bench", "--otlp-endpoint", otlp_url]
    enforce = ["--enforce", "--daemon-url", api_url, "--daemon-token", TOKEN]
    variants = {"plain proxy": base, "enforce (cache 2 s)": base + enforce,
                "enforce (no cache)": base + enforce + ["--decision-ttl", "0"]}
    env = {**os.environ, "TOOLWATCH_FINGERPRINT_KEY": "bench-key"}
    params = {k: StdioServerParameters(command=v[0], args=[*v[1:], "--", *server], env=env) for k, v in variants.items()}
    names = list(params)
    async with stdio_client(params[names[0]]) as (r0, w0), stdio_client(params[names[1]]) as (r1, w1), \
            stdio_client(params[names[2]]) as (r2, w2):
        async with ClientSession(r0, w0) as s0, ClientSession(r1, w1) as s1, ClientSession(r2, w2) as s2:
            sessions = dict(zip(names, (s0, s1, s2), strict=True))
            for s in sessions.values():
                await s.initialize()
                await s.list_tools()
            times = await alternate(sessions, calls)
    report("stdio", times)


FACTS = {"agent_id": "bench", "server": "demo-notes", "tool": "read_note", "args_json": '{"name":"todo"}',
         "args_bytes": 15, "destructive_hint": False}


async def uncached(n: int, url: str) -> list[float]:
    client = DecisionClient(EnforceOptions(url, token=TOKEN, cache_ttl_s=0.0, timeout_s=5.0))
    await client.decide(FACTS)
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        verdict = await client.decide(FACTS)
        t.append((time.perf_counter() - t0) * 1e3)
    assert verdict.action == "allow" and verdict.source == "daemon", verdict
    await client.close()
    return t


async def floor_server() -> tuple[web.AppRunner, str]:
    """An aiohttp server answering /api/v1/decide with a fixed verdict: the cost of any round trip here."""
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"action": "allow", "reason": "", "rule": "", "quarantined": False})

    app = web.Application()
    app.router.add_post("/api/v1/decide", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def under_span_load(n: int, api_url: str, otlp_port: int, rate: int) -> None:
    """Uncached decisions while the daemon ingests spans (its batches hold the detector lock meanwhile)."""
    load = await asyncio.create_subprocess_exec(sys.executable, __file__, "--emit-spans", str(otlp_port), str(rate))
    runner, floor_url = await floor_server()
    try:
        await asyncio.sleep(2.0)
        busy, floor = await uncached(n, api_url), await uncached(n, floor_url)
    finally:
        load.terminate()
        await load.wait()
        await runner.cleanup()
    print(f"\n[decision latency while the daemon ingests {rate} spans/s] {n} decisions")
    for label, t in (("uncached, daemon busy", busy), ("floor: fixed-answer server", floor)):
        print(f"  {label:<26} p50 {pct(t, .5):7.3f} ms  p99 {pct(t, .99):7.3f} ms  max {max(t):7.3f} ms")
    print("  (the floor server runs in this process while the span load runs: it shows what the host "
          "itself adds under that load)")


def emit_spans(otlp_port: int, rate: int) -> None:
    """Child process: tool-call spans to the daemon at ``rate`` per second, like many busy proxies."""
    import random

    from spans import emit_call

    from toolwatch.instrumentation.mcp_client import setup_tracing

    tp = setup_tracing("bench-load", endpoint=f"http://127.0.0.1:{otlp_port}", environ={"OTEL_BSP_SCHEDULE_DELAY": "100"})
    tools = ["read_note", "list_notes", "write_note", "search_notes"]
    sent, start = 0, time.monotonic()
    while True:
        for _ in range(10):
            emit_call(tp, agent=f"agent-{random.randrange(50)}", server="demo-notes", tool=random.choice(tools),
                      session=f"s{random.randrange(100)}", args={"name": "x" * random.randrange(40)})
            sent += 1
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)


async def decisions(n: int, api_url: str) -> None:
    facts = FACTS
    rows = []
    for label, ttl in (("uncached (keep-alive)", 0.0), ("cached (TTL 2 s)", 2.0)):
        client = DecisionClient(EnforceOptions(api_url, token=TOKEN, cache_ttl_s=ttl))
        await client.decide(facts)
        t = []
        for _ in range(n):
            t0 = time.perf_counter()
            verdict = await client.decide(facts)
            t.append((time.perf_counter() - t0) * 1e3)
        assert verdict.action == "allow", verdict
        await client.close()
        rows.append((label, t))
    naive = []  # baseline: a fresh connection per decision, as a client without pooling would do
    for _ in range(min(n, 500)):
        t0 = time.perf_counter()
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
            async with s.post(api_url + "/api/v1/decide", json=facts) as resp:
                await resp.json()
        naive.append((time.perf_counter() - t0) * 1e3)
    rows.append(("naive (new connection)", naive))
    runner, floor_url = await floor_server()
    try:
        rows.append(("floor: fixed-answer server", await uncached(n, floor_url)))
    finally:
        await runner.cleanup()
    print(f"\n[decision latency in the proxy's client, daemon on this host] {n} decisions")
    for label, t in rows:
        print(f"  {label:<24} p50 {pct(t, .5):7.3f} ms  p99 {pct(t, .99):7.3f} ms  max {max(t):7.3f} ms")
    print("  target: < 2 ms p99")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--span-rate", type=int, default=500, help="spans/s sent to the daemon for the busy row (0: skip)")
    parser.add_argument("--emit-spans", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.emit_spans:
        emit_spans(*args.emit_spans)
        return
    api, otlp = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "toolwatch.yaml"
        cfg.write_text(CONFIG.format(api=api, otlp=otlp, data=Path(tmp) / "data", token=TOKEN))
        daemon = await asyncio.create_subprocess_exec(sys.executable, "-m", "toolwatch.cli", "run", "--config", str(cfg),
                                                      stderr=asyncio.subprocess.DEVNULL)
        sink = await OtlpSink().start()  # spans go to a sink so the daemon's CPU is spent on decisions only
        try:
            await wait_listening(api)
            api_url = f"http://127.0.0.1:{api}"
            await decisions(args.decisions, api_url)
            await end_to_end(args.calls, api_url, sink.url)
            await end_to_end_http(args.calls, api_url, sink.url)
            if args.span_rate:
                await under_span_load(args.decisions, api_url, otlp, args.span_rate)
        finally:
            await sink.stop()
            daemon.terminate()
            await daemon.wait()


if __name__ == "__main__":
    asyncio.run(main())
