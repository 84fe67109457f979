"""OTLP ingest benchmark: sustained spans/s end to end and lag, against a naive pipeline.

    .venv/bin/python bench/ingest.py [--seconds 8] [--batch 500] [--clients 2] [--profile]

A real Daemon (all built-in detectors on) runs in this process; load generators in separate
processes post pre-encoded OTLP bodies (the SDK exporter is far too slow to load it) over
OTLP/HTTP protobuf and OTLP/gRPC, backing off on 429/RESOURCE_EXHAUSTED as exporters do.
Throughput is counted "request in -> findings out": spans sent until the pipeline has processed
every one. Lag is each request's arrival-to-processed time, taken from the pipeline itself.
The naive baseline runs in the same run: one span per request, MessageToDict, every attribute
walked, detectors called per span, a labelled metric inc() per span.
Prints figures; never pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import http.client
import itertools
import multiprocessing as mp
import os
import pstats
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from prometheus_client import CollectorRegistry

from toolwatch.collector.config import Config
from toolwatch.collector.daemon import Daemon, build_detectors
from toolwatch.collector.metrics import Metrics
from toolwatch.detectors.events import Batch, ToolCall
from toolwatch.instrumentation import semconv as sc

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
AGENTS = [f"agent-{i}" for i in range(50)]
TOOLS = [("files", "read_file"), ("files", "write_file"), ("web", "fetch"), ("mail", "send"), ("db", "query"), ("git", "commit")]


# --- workload ------------------------------------------------------------------------------------
def _set(span: Any, key: str, value: Any) -> None:
    kv = span.attributes.add()
    kv.key = key
    if isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    elif isinstance(value, list):
        kv.value.array_value.SetInParent()
        for v in value:
            kv.value.array_value.values.add().string_value = v
    else:
        kv.value.string_value = value


def make_body(n: int, seed: int) -> bytes:
    """One request of ``n`` toolwatch tool-call spans (13 attributes each), timestamps near now."""
    rnd = random.Random(seed)
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    _set(rs.resource, "service.name", "bench-agent")
    ss = rs.scope_spans.add()
    ss.scope.name = "toolwatch.instrumentation"
    now = time.time_ns()
    for i in range(n):
        server, tool = rnd.choice(TOOLS)
        span = ss.spans.add()
        span.name = f"tools/call {tool}"
        span.kind = 3
        span.trace_id = rnd.randbytes(16)
        span.span_id = rnd.randbytes(8)
        span.start_time_unix_nano = now + i * 1000
        span.end_time_unix_nano = now + i * 1000 + 2_000_000
        _set(span, sc.MCP_METHOD_NAME, sc.METHOD_TOOLS_CALL)
        _set(span, sc.GEN_AI_OPERATION_NAME, sc.OP_EXECUTE_TOOL)
        _set(span, sc.GEN_AI_TOOL_NAME, tool)
        _set(span, sc.GEN_AI_AGENT_ID, rnd.choice(AGENTS))
        _set(span, sc.MCP_SESSION_ID, f"s-{rnd.randrange(500)}")
        _set(span, sc.TW_SERVER_NAME, server)
        _set(span, sc.JSONRPC_REQUEST_ID, str(i))
        _set(span, sc.GEN_AI_TOOL_CALL_ARGUMENTS, '{"path": "<path>", "mode": "r"}')
        _set(span, sc.TW_REDACTED, True)
        _set(span, sc.TW_ARGS_BYTES, 40 + i % 50)
        _set(span, sc.TW_RESULT_BYTES, 1000 + i % 999)
        _set(span, sc.TW_ARGS_LABELS, ["path"])
        _set(span, sc.MCP_PROTOCOL_VERSION, "2025-06-18")
    return req.SerializeToString()


# --- load generators (separate processes) ----------------------------------------------------------
def http_client(port: int, bodies: list[bytes], n_requests: int, interval_s: float, out: Any) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # headers and body go in two writes
    sent = retries = 0
    next_at = time.perf_counter()
    for i in range(n_requests):
        if interval_s:
            next_at += interval_s
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        body = bodies[i % len(bodies)]
        while True:
            conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                break
            retries += 1
            time.sleep(0.02 if resp.status in (429, 503) else 1)
        sent += 1
    out.put((sent, retries))


def grpc_client(port: int, bodies: list[bytes], n_requests: int, interval_s: float, out: Any) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    fn = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=ExportTraceServiceResponse.FromString)
    sent = retries = 0
    next_at = time.perf_counter()
    for i in range(n_requests):
        if interval_s:
            next_at += interval_s
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        while True:
            try:
                fn(bodies[i % len(bodies)], timeout=30)
                break
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                    raise
                retries += 1
                time.sleep(0.02)
        sent += 1
    out.put((sent, retries))


# --- the daemon under test ---------------------------------------------------------------------------
class LagRecorder:
    """Stands in for the lag histogram: keeps every observation (and still feeds the histogram)."""

    def __init__(self, hist: Any) -> None:
        self.hist = hist
        self.values: list[float] = []

    def observe(self, v: float) -> None:
        self.values.append(v)
        self.hist.observe(v)


class DaemonRunner:
    def __init__(self, data_dir: str) -> None:
        cfg = Config(otlp_http="127.0.0.1:0", otlp_grpc="127.0.0.1:0", listen="127.0.0.1:0", data_dir=data_dir)
        cfg.pipeline.batch_max_size = 4096
        cfg.pipeline.batch_max_delay_ms = 50
        cfg.pipeline.snapshot_interval_s = 3600
        cfg.max_body_bytes = 64 * 1024 * 1024
        cfg.validate()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.daemon: Daemon = self.call(self._start(cfg))
        self.lag = LagRecorder(self.daemon.metrics.lag)
        self.daemon.metrics.lag = self.lag  # type: ignore[assignment]

    async def _start(self, cfg: Config) -> Daemon:
        d = Daemon(cfg)
        await d.start()
        return d

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def port(self, name: str) -> int:
        return self.daemon.receiver(name).bound_port  # type: ignore[attr-defined,return-value]

    def close(self) -> None:
        self.call(self.daemon.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def run_load(runner: DaemonRunner, proto: str, bodies: list[bytes], spans_per_body: int, clients: int, seconds: float,
             rate: float | None) -> dict[str, float]:
    """Drive the daemon for about ``seconds``; ``rate`` spans/s in total, or None for as fast as it goes."""
    if rate:
        interval = spans_per_body * clients / rate
        n_requests = max(1, int(seconds / interval))
    else:
        interval = 0.0
        n_requests = max(1, int(seconds * 90_000 / spans_per_body / clients))  # sized for ~the target rate
    target = http_client if proto == "http" else grpc_client
    port = runner.port("otlp_http" if proto == "http" else "otlp_grpc")
    start_processed = runner.daemon.pipeline.processed
    runner.lag.values.clear()
    q: Any = mp.get_context("fork").Queue()
    procs = [mp.get_context("fork").Process(target=target, args=(port, bodies, n_requests, interval, q)) for _ in range(clients)]
    total = n_requests * clients * spans_per_body
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    while runner.daemon.pipeline.processed - start_processed < total:
        time.sleep(0.002)
    elapsed = time.perf_counter() - t0
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    lags = sorted(runner.lag.values)
    return {
        "spans": total,
        "seconds": elapsed,
        "spans_per_s": total / elapsed,
        "lag_p50_ms": 1000 * lags[len(lags) // 2] if lags else float("nan"),
        "lag_p99_ms": 1000 * lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else float("nan"),
        "retries": sum(r[1] for r in results),
    }


# --- naive baseline ------------------------------------------------------------------------------------
def naive(bodies: list[bytes], n_spans: int) -> dict[str, float]:
    """One span at a time: its own request, MessageToDict, every attribute walked, detectors per span."""
    singles: list[bytes] = []
    for body in itertools.cycle(bodies):
        req = ExportTraceServiceRequest.FromString(body)
        for span in req.resource_spans[0].scope_spans[0].spans:
            one = ExportTraceServiceRequest()
            rs = one.resource_spans.add()
            rs.resource.CopyFrom(req.resource_spans[0].resource)
            rs.scope_spans.add().spans.append(span)
            singles.append(one.SerializeToString())
            if len(singles) >= n_spans:
                break
        if len(singles) >= n_spans:
            break
    detectors = build_detectors(Config())
    metrics = Metrics(CollectorRegistry())
    lags = []
    t0 = time.perf_counter()
    for body in singles:
        arrived = time.perf_counter()
        data = json_format.MessageToDict(ExportTraceServiceRequest.FromString(body))
        for rs in data["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    attrs = {a["key"]: next(iter(a["value"].values()), None) for a in span.get("attributes", [])}
                    call = ToolCall(
                        time_ns=int(span["startTimeUnixNano"]),
                        agent_id=str(attrs.get(sc.GEN_AI_AGENT_ID, "unknown")),
                        tool=str(attrs.get(sc.GEN_AI_TOOL_NAME, "")),
                        server=str(attrs.get(sc.TW_SERVER_NAME, "")),
                        session_id=str(attrs.get(sc.MCP_SESSION_ID, "")),
                        args_bytes=int(attrs.get(sc.TW_ARGS_BYTES, 0)),
                    )
                    batch = Batch(calls=[call], watermark_ns=call.time_ns)
                    for det in detectors:
                        det.observe(batch)
                    metrics.tool_calls.add([(call.agent_id, call.server, call.tool)])
                    metrics.spans_received.labels("naive").inc()
        lags.append(time.perf_counter() - arrived)
    elapsed = time.perf_counter() - t0
    lags.sort()
    return {"spans": len(singles), "seconds": elapsed, "spans_per_s": len(singles) / elapsed,
            "lag_p50_ms": 1000 * lags[len(lags) // 2], "lag_p99_ms": 1000 * lags[int(len(lags) * 0.99)], "retries": 0}


def calibrate(bodies: list[bytes]) -> float:
    """Bare protobuf parse rate right now, to compare this machine's state with the issue's ~2 M spans/s."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        for body in bodies:
            n += len(ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans)
    return n / (time.perf_counter() - t0)


def fmt(name: str, r: dict[str, float]) -> str:
    return (f"{name:<34} {r['spans']:>9,.0f} spans {r['seconds']:>6.2f} s {r['spans_per_s']:>10,.0f} spans/s"
            f"   lag p50 {r['lag_p50_ms']:>7.1f} ms  p99 {r['lag_p99_ms']:>7.1f} ms  retries {r['retries']:.0f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--batch", type=int, default=500, help="spans per request")
    ap.add_argument("--clients", type=int, default=2, help="load generator processes")
    ap.add_argument("--paced-rate", type=float, default=20_000, help="spans/s for the lag run")
    ap.add_argument("--profile", action="store_true", help="cProfile the daemon thread during the HTTP run")
    ap.add_argument("--only", choices=["http", "grpc", "paced", "naive"], action="append")
    args = ap.parse_args(argv)
    only = set(args.only or ["http", "grpc", "paced", "naive"])
    bodies = [make_body(args.batch, seed) for seed in range(8)]
    print(f"toolwatch ingest bench: {os.cpu_count()} CPUs, {args.batch} spans/request, {args.clients} load processes, "
          f"13 attributes/span, detectors: {[d.name for d in build_detectors(Config())]}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"calibration: bare protobuf parse {calibrate(bodies):,.0f} spans/s (issue's reference machine, idle: ~2,000,000)",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        runner = DaemonRunner(str(Path(tmp) / "data"))
        try:
            run_load(runner, "http", bodies, args.batch, 1, 0.5, None)  # warm-up
            if "http" in only:
                prof = cProfile.Profile() if args.profile else None
                if prof:
                    runner.call(_enable(prof))
                print(fmt("OTLP/HTTP protobuf, max rate", run_load(runner, "http", bodies, args.batch, args.clients, args.seconds, None)),
                      flush=True)
                if prof:
                    runner.call(_disable(prof))
                    pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
            if "grpc" in only:
                print(fmt("OTLP/gRPC, max rate", run_load(runner, "grpc", bodies, args.batch, args.clients, args.seconds, None)),
                      flush=True)
            if "paced" in only:
                paced = [make_body(250, s) for s in range(8)]
                r = run_load(runner, "http", paced, 250, args.clients, args.seconds, args.paced_rate)
                print(fmt(f"OTLP/HTTP paced at {args.paced_rate:,.0f}/s", r))
        finally:
            runner.close()
    if "naive" in only:
        print(fmt("naive one-span-at-a-time", naive(bodies, 20_000)))
    return 0


async def _enable(prof: cProfile.Profile) -> None:
    prof.enable()


async def _disable(prof: cProfile.Profile) -> None:
    prof.disable()


if __name__ == "__main__":
    sys.exit(main())
