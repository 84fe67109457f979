"""Enforcement overhead: the proxy's added latency per tools/call with enforcement on vs. off.

A toolwatch daemon runs as its own process on this host (policy detector on), and three stdio
sessions to the demo notes server alternate calls: the plain proxy, the enforcing proxy with its
default decision cache (2 s TTL), and the enforcing proxy with the cache off (every call asks
the daemon). Then the decision itself is timed in this process: ``DecisionClient.decide`` over
its keep-alive connection, cached and uncached, against a naive baseline that opens a new HTTP
connection per decision. Target: decision < 2 ms p99 with the daemon on the same host.

    .venv/bin/python bench/enforcement_overhead.py [--calls 300] [--decisions 2000]
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
from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402
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
    plain = times["plain proxy"]
    print(f"\n[end to end, stdio] {calls} read_note calls per variant, alternating")
    for name, t in times.items():
        extra = "" if name == "plain proxy" else (
            f"  added vs plain: p50 {pct(t, .5) - pct(plain, .5):+7.3f} ms  p99 {pct(t, .99) - pct(plain, .99):+7.3f} ms")
        print(f"  {name:<20} p50 {pct(t, .5):7.3f} ms  p99 {pct(t, .99):7.3f} ms{extra}")


async def decisions(n: int, api_url: str) -> None:
    facts = {"agent_id": "bench", "server": "demo-notes", "tool": "read_note", "args_json": '{"name":"todo"}',
             "args_bytes": 15, "destructive_hint": False}
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
    print(f"\n[decision latency in the proxy's client, daemon on this host] {n} decisions")
    for label, t in rows:
        print(f"  {label:<24} p50 {pct(t, .5):7.3f} ms  p99 {pct(t, .99):7.3f} ms  max {max(t):7.3f} ms")
    print("  target: < 2 ms p99")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--decisions", type=int, default=2000)
    args = parser.parse_args()
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
        finally:
            await sink.stop()
            daemon.terminate()
            await daemon.wait()


if __name__ == "__main__":
    asyncio.run(main())
