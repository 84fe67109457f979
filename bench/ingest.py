"""OTLP ingest benchmark: sustained spans/s end to end and lag, against a naive pipeline.

    .venv/bin/python bench/ingest.py [--seconds 8] [--batch 500] [--clients 2] [--profile]
                                     [--workload fleet|random|routine] [--anomaly-rate 0.001] [--otlp-processes N]
                                     [--cpu-affinity auto|off|CPUS]
                                     [--warm baselines|none] [--warm-limit 300]
    .venv/bin/python bench/ingest.py --soak 600 [--interval 20] [--traffic live|replay]

A real Daemon (all built-in detectors on) runs in this process; load generators in separate
processes post pre-encoded OTLP bodies (the SDK exporter is far too slow to load it) over
OTLP/HTTP protobuf and OTLP/gRPC, backing off on 429/RESOURCE_EXHAUSTED as exporters do.
Throughput is counted "request in -> findings out": spans sent until the pipeline has processed
every one. Before the max-rate runs the daemon is driven to steady state (``--warm baselines``):
until every agent is scored by an IsolationForest model of its own, since a fresh daemon skips the
forest for agents no model covers yet and runs faster than it ever will again. Lag is each
request's arrival-to-processed time, taken from the pipeline itself.
The naive baseline runs in the same run: one span per request, MessageToDict, every attribute
walked, detectors called per span, a labelled metric inc() per span.
The traffic is ``--workload`` from bench/workloads.py (default ``fleet``); each run prints the
share of spans that raised findings, per detector, and per ``detector/kind`` (the evidence's kind,
e.g. ``exfiltration/sensitive_then_send``) with how many agents those findings name.
Prints figures; never pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import http.client
import itertools
import multiprocessing as mp
import os
import pstats
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
from toolwatch.detectors.iforest_detector import ACTIVE as IFOREST_ACTIVE
from toolwatch.instrumentation import semconv as sc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads as wl  # noqa: E402
from workloads import LiveTraffic, Replay, make_body  # noqa: E402,F401  (make_body: the old import path)

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


# --- load generators (separate processes) ----------------------------------------------------------
def http_soak_client(port: int, traffic: Any, seconds: float, out: Any, honour_retry_after: bool = False) -> None:
    """Post as fast as accepted for ``seconds`` of wall time (the soak run). A refused request is
    sent again after 20 ms, or after the daemon's ``Retry-After`` as OTLP exporters should."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sent = retries = 0
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        body = traffic.body(i)
        i += 1
        while True:
            conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                sent += 1
                break
            retries += 1
            if time.perf_counter() >= end:
                break  # the soak is over: this request is not sent
            if honour_retry_after and resp.getheader("Retry-After"):
                time.sleep(min(float(resp.getheader("Retry-After") or 1), max(0.0, end - time.perf_counter())))
            else:
                time.sleep(0.02 if resp.status in (429, 503) else 1)
    out.put((sent, retries))


def http_client(port: int, traffic: Any, n_requests: int, interval_s: float, out: Any) -> None:
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
        body = traffic.body(i)
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


def grpc_client(port: int, traffic: Any, n_requests: int, interval_s: float, out: Any) -> None:
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
        body = traffic.body(i)
        while True:
            try:
                fn(body, timeout=30)
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


class ProcessedWaiter:
    """A batch listener that wakes the bench when the pipeline has processed ``target`` spans.

    Polling ``pipeline.processed`` in a sleep loop made the bench's own thread ask the daemon's
    interpreter for the lock every few milliseconds (4 % of the daemon process's samples under
    py-spy), which no deployment has."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.done = threading.Event()

    def expect(self, n: int) -> None:
        self.count, self.target = 0, n
        self.done.clear()

    def __call__(self, batch: Any, _findings: Any) -> None:
        self.count += len(batch)
        if self.count >= self.target:
            self.done.set()


class DaemonRunner:
    def __init__(self, data_dir: str, otlp_processes: int = 0, cpu_affinity: str = "auto",
                 queue_max_wait_ms: int | None = None, batch_max_size: int | None = None,
                 retrain_max_share: float | None = None) -> None:
        cfg = Config(otlp_http="127.0.0.1:0", otlp_grpc="127.0.0.1:0", listen="127.0.0.1:0", data_dir=data_dir,
                     otlp_processes=otlp_processes, cpu_affinity=cpu_affinity)
        if batch_max_size is not None:
            cfg.pipeline.batch_max_size = batch_max_size
        if retrain_max_share is not None:
            cfg.pipeline.retrain_max_share = retrain_max_share
        cfg.pipeline.batch_max_delay_ms = 50
        cfg.pipeline.snapshot_interval_s = 3600
        if queue_max_wait_ms is not None:
            cfg.pipeline.queue_max_wait_ms = queue_max_wait_ms
        cfg.max_body_bytes = 64 * 1024 * 1024
        cfg.validate()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.daemon: Daemon = self.call(self._start(cfg))
        self.lag = LagRecorder(self.daemon.metrics.lag)
        self.daemon.metrics.lag = self.lag  # type: ignore[assignment]
        self.tally = wl.FindingTally()
        self.daemon.pipeline.listeners.append(self.tally)
        self.waiter = ProcessedWaiter()
        self.daemon.pipeline.batch_listeners.append(self.waiter)

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


def run_load(runner: DaemonRunner, proto: str, traffics: list[Any], spans_per_body: int, clients: int, seconds: float,
             rate: float | None) -> dict[str, Any]:
    """Drive the daemon for about ``seconds``; ``rate`` spans/s in total, or None for as fast as it goes.
    ``traffics``: one per load generator (``workloads.load_traffic``)."""
    if rate:
        interval = spans_per_body * clients / rate
        n_requests = max(1, int(seconds / interval))
    else:
        interval = 0.0
        n_requests = max(1, int(seconds * 90_000 / spans_per_body / clients))  # sized for ~the target rate
    target = http_client if proto == "http" else grpc_client
    port = runner.port("otlp_http" if proto == "http" else "otlp_grpc")
    runner.lag.values.clear()
    runner.tally.reset()
    q: Any = mp.get_context("fork").Queue()
    procs = [mp.get_context("fork").Process(
        target=target, args=(port, traffics[k].fresh(rate / clients if rate else None), n_requests, interval, q))
        for k in range(clients)]
    total = n_requests * clients * spans_per_body
    runner.waiter.expect(total)
    budget = CpuBudget(runner)
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    if not runner.waiter.done.wait(600):
        raise SystemExit(f"the daemon processed {runner.waiter.count:,} of {total:,} spans in 600 s")
    elapsed = time.perf_counter() - t0
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    cpu = budget.line(total)
    lags = sorted(runner.lag.values)
    return {
        "spans": total,
        "seconds": elapsed,
        "spans_per_s": total / elapsed,
        "lag_p50_ms": 1000 * lags[len(lags) // 2] if lags else float("nan"),
        "lag_p99_ms": 1000 * lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else float("nan"),
        "retries": sum(r[1] for r in results),
        "findings": runner.tally.summary(total),
        "cpu": cpu,
        "baselines": baselines(runner.daemon.detectors),
    }


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds of a live process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _child_cpu(runner: "DaemonRunner") -> dict[int, tuple[str, float]]:
    """CPU seconds of the daemon's child processes (OTLP workers, the refit worker), by pid, with their role."""
    roles: dict[int, str] = {}
    for name in ("otlp_http", "otlp_grpc"):  # each receiver's workers (otlp_processes); idle ones add ~0
        for pid in getattr(runner.daemon.receiver(name), "pids", []):
            roles[pid] = "OTLP workers"
    worker = runner.daemon.refit_worker
    if worker is not None and worker.pid is not None:
        roles[worker.pid] = "refit worker"
    return {pid: (role, proc_cpu(pid)) for pid, role in roles.items()}


def cpu_ticks() -> dict[str, tuple[int, int]]:
    """Per CPU (``cpu0``, ``cpu1``, ...), (busy, total) clock ticks since boot from /proc/stat; idle
    and iowait are not busy."""
    out: dict[str, tuple[int, int]] = {}
    try:
        with open("/proc/stat") as fh:
            for line in fh:
                name, *vals = line.split()
                if name.startswith("cpu") and name != "cpu":
                    ticks = [int(v) for v in vals[:8]]
                    out[name] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
    except (OSError, ValueError, IndexError):
        return {}
    return out


def cpu_busy(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> str:
    """Each CPU's busy share between two ``cpu_ticks``, by anything on the machine: a saturated
    CPU beside one with idle time says the work is badly shared, two saturated ones that it costs too much."""
    shares = [f"{name} {100 * (after[name][0] - b) / max(1, after[name][1] - t):.0f}%"
              for name, (b, t) in before.items() if name in after]
    return ", ".join(shares) or "unknown"


class CpuBudget:
    """CPU seconds per process role over a run, as µs per span: where the machine's two cores go
    (the daemon's interpreter, its OTLP worker processes, the refit worker, the load generators),
    and so what rate the whole machine could reach at this cost per span; and how busy each CPU
    was meanwhile (``cpu_affinity: auto`` keeps the daemon's threads on one of them)."""

    def __init__(self, runner: "DaemonRunner") -> None:
        self.runner = runner
        self.daemon0 = _cpu_s()
        self.children0 = _child_cpu(runner)
        self.loadgen0 = reaped_cpu()
        self.ticks0 = cpu_ticks()

    def line(self, spans: int) -> str:
        roles: dict[str, float] = {"daemon": _cpu_s() - self.daemon0}
        for pid, (role, cpu) in _child_cpu(self.runner).items():
            roles[role] = roles.get(role, 0.0) + cpu - self.children0.get(pid, (role, 0.0))[1]
        roles["load generators"] = reaped_cpu() - self.loadgen0
        per = {k: 1e6 * v / spans for k, v in roles.items()}
        total = sum(per.values())
        parts = ", ".join(f"{k} {v:.1f}" for k, v in per.items())
        return (f"CPU µs/span: {parts}; total {total:.1f} -> {os.cpu_count()} cores at this cost: "
                f"{os.cpu_count() * 1e6 / total:,.0f} spans/s; CPUs busy: {cpu_busy(self.ticks0, cpu_ticks())}")


def reaped_cpu() -> float:
    """CPU seconds of this process's children that have ended and been waited for (the load
    generators once joined; ingest_kafka.py: snapshot processes)."""
    t = os.times()
    return t.children_user + t.children_system


def _cpu_s() -> float:
    """CPU seconds of this process (the daemon): spans per CPU-second does not depend on how
    much of the machine other processes take."""
    t = os.times()
    return t.user + t.system


class GcTimer:
    """Counts collections and their pause time per generation (gc.callbacks)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._t0 = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            g = info["generation"]
            self.count[g] += 1
            self.seconds[g] += time.perf_counter() - self._t0

    def close(self) -> None:
        gc.callbacks.remove(self._cb)


class CpuSplit:
    """Thread CPU seconds spent in detectors (``Pipeline._observe``) and in refits, by wrapping
    the daemon's own methods: what is left of the process's CPU is ingest, the event loop and GC
    outside those two."""

    def __init__(self, runner: DaemonRunner) -> None:
        self.observe = self.refit = 0.0
        self.by_detector: dict[str, float] = {}
        """Thread CPU seconds per detector's ``observe``: which detector grows as baselines mature."""
        pipe = runner.daemon.pipeline
        pipe._observe = self._timed(pipe._observe, "observe")  # type: ignore[method-assign]
        for det in runner.daemon.retrainer.detectors:
            det.retrain = self._timed(det.retrain, "refit")  # type: ignore[method-assign]
        for det in runner.daemon.detectors:
            det.observe = self._timed_detector(det.observe, det.name)  # type: ignore[method-assign]

    def _timed_detector(self, fn: Any, name: str) -> Any:
        by = self.by_detector
        by[name] = 0.0

        def timed(batch: Any) -> Any:
            t = time.thread_time()
            try:
                return fn(batch)
            finally:
                by[name] += time.thread_time() - t

        return timed

    def per_span(self, last: dict[str, float], spans: int, top: int = 6) -> str:
        """The ``top`` detectors' thread CPU per span since ``last`` (µs), biggest first."""
        got = sorted(((v - last.get(k, 0.0), k) for k, v in self.by_detector.items()), reverse=True)
        return " ".join(f"{k} {1e6 * d / max(1, spans):.1f}" for d, k in got[:top])

    def _timed(self, fn: Any, field: str) -> Any:
        def timed(*args: Any) -> Any:
            t = time.thread_time()
            try:
                return fn(*args)
            finally:
                setattr(self, field, getattr(self, field) + time.thread_time() - t)

        return timed


def baselines(detectors: Any) -> tuple[int, int]:
    """(agents the IsolationForest scores with a model of their own, agents it knows). A fresh daemon
    has almost no model yet and skips the forest walk for every agent none covers (its own or a group
    model): a run measured before every agent is scored is cheaper than the daemon's steady state."""
    det = next((d for d in detectors if d.name == "iforest"), None)
    if det is None:
        return 0, 0
    states = list(det.agent_states().values())
    return sum(s == IFOREST_ACTIVE for s in states), len(states)


def warm_baselines(runner: DaemonRunner, traffics: list[Any], spans_per_body: int, clients: int,
                   limit_s: float) -> None:
    """Drive OTLP/HTTP at full rate until every agent seen has its own IsolationForest model (the
    daemon's steady state: every span walks a forest), or ``limit_s`` has passed."""
    t0 = time.perf_counter()
    spans = 0
    while True:
        active, known = baselines(runner.daemon.detectors)
        if (known and active >= known) or time.perf_counter() - t0 > limit_s:
            break
        spans += run_load(runner, "http", traffics, spans_per_body, clients, 3.0, None)["spans"]
    short = "" if known and active >= known else f" (stopped at --warm-limit {limit_s:.0f} s)"
    print(f"warm-up to steady state: {active} of {known} agents scored with a model of their own after "
          f"{spans:,} spans in {time.perf_counter() - t0:.0f} s{short}", flush=True)


def state_sizes(runner: DaemonRunner) -> str:
    """Entries per detector state (agents, keys), for spotting growth."""
    out = []
    for det in runner.daemon.detectors:
        st = getattr(det, "_state", None)
        if isinstance(st, dict) and st:
            out.append(f"{det.name}={len(st)}")
    return " ".join(out)


def census(top: int = 12) -> str:
    """The most common GC-tracked object types (what every full collection has to walk)."""
    from collections import Counter

    objs = gc.get_objects()
    counts = Counter(type(o).__name__ for o in objs)
    del objs
    return f"{sum(counts.values()):,} tracked: " + ", ".join(f"{k} {v:,}" for k, v in counts.most_common(top))


def soak(runner: DaemonRunner, traffics: list[Any], seconds: float, interval: float, label: str,
         with_census: bool = False, honour_retry_after: bool = False) -> None:
    """One long max-rate OTLP/HTTP run, printing per interval: spans/s, lag p50, RSS, GC pauses.
    ``traffics``: one per load generator; ``label`` says what they send."""
    port = runner.port("otlp_http")
    ctx = mp.get_context("fork")
    q: Any = ctx.Queue()
    procs = [ctx.Process(target=http_soak_client, args=(port, t, seconds, q, honour_retry_after)) for t in traffics]
    runner.tally.reset()
    gct = GcTimer()
    pipe = runner.daemon.pipeline
    db = Path(runner.daemon.cfg.data_path)
    print(f"soak: {seconds:.0f} s, traffic {label}, samples every {interval:.0f} s, "
          f"retry after {'Retry-After' if honour_retry_after else '20 ms'}", flush=True)
    print(f"{'t s':>6} {'spans/s':>8} {'total':>10} {'lag p50 ms':>10} {'RSS MB':>7} {'gc2 n':>5} {'gc2 s':>6} "
          f"{'gc s':>6} {'db MB':>6} {'cpu %':>5} {'spans/cpu-s':>11} {'429/s':>6} {'refits':>6} {'det %':>5} "
          f"{'refit %':>7} {'load':>5} {'batch':>5}  state",
          flush=True)
    reg = runner.daemon.metrics.registry

    def batches() -> tuple[float, float]:
        """Spans and batches through the detectors so far (for the mean batch size per interval)."""
        return (reg.get_sample_value("toolwatch_pipeline_batch_size_sum") or 0.0,
                reg.get_sample_value("toolwatch_pipeline_batch_size_count") or 0.0)

    def refused() -> float:
        return reg.get_sample_value("toolwatch_requests_rejected_total", {"receiver": "otlp_http", "reason": "queue_full"}) or 0.0

    t0 = time.perf_counter()
    for p in procs:
        p.start()
    last_t, last_n, last_lag = t0, pipe.processed, len(runner.lag.values)
    last_gc = (0, 0.0, 0.0)
    split = CpuSplit(runner)
    last_cpu, last_refused, last_fits = _cpu_s(), refused(), runner.daemon.retrainer.fitted
    last_split = (0.0, 0.0)
    last_by = dict(split.by_detector)
    last_batches = batches()
    while True:
        time.sleep(interval - ((time.perf_counter() - t0) % interval))
        now, n = time.perf_counter(), pipe.processed
        lags = sorted(runner.lag.values[last_lag:])
        gc_now = (gct.count[2], gct.seconds[2], sum(gct.seconds))
        db_mb = sum(f.stat().st_size for f in db.glob("toolwatch.db*")) / 1e6
        b_now = batches()
        print(f"{now - t0:6.0f} {(n - last_n) / (now - last_t):8,.0f} {n:10,} "
              f"{1000 * lags[len(lags) // 2] if lags else float('nan'):10.0f} {_rss_mb():7.0f} "
              f"{gc_now[0] - last_gc[0]:5d} {gc_now[1] - last_gc[1]:6.2f} {gc_now[2] - last_gc[2]:6.2f} {db_mb:6.1f} "
              f"{100 * (_cpu_s() - last_cpu) / (now - last_t):5.0f} {(n - last_n) / max(1e-9, _cpu_s() - last_cpu):11,.0f} "
              f"{(refused() - last_refused) / (now - last_t):6.1f} {runner.daemon.retrainer.fitted - last_fits:6d} "
              f"{100 * (split.observe - last_split[0]) / max(1e-9, _cpu_s() - last_cpu):5.0f} "
              f"{100 * (split.refit - last_split[1]) / max(1e-9, _cpu_s() - last_cpu):7.0f} "
              f"{os.getloadavg()[0]:5.1f} {(b_now[0] - last_batches[0]) / max(1.0, b_now[1] - last_batches[1]):5.0f}  "
              f"{state_sizes(runner)} iforest_models={'/'.join(map(str, baselines(runner.daemon.detectors)))}", flush=True)
        print(f"   detector CPU µs/span: {split.per_span(last_by, n - last_n)}", flush=True)
        last_cpu, last_refused, last_fits = _cpu_s(), refused(), runner.daemon.retrainer.fitted
        last_split, last_by = (split.observe, split.refit), dict(split.by_detector)
        if with_census:
            print("   census:", census(), flush=True)
        last_t, last_n, last_lag, last_gc, last_batches = now, n, len(runner.lag.values), gc_now, b_now
        if not any(p.is_alive() for p in procs):
            break
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    gct.close()
    print(f"soak done: {pipe.processed:,} spans in {time.perf_counter() - t0:.0f} s, retries {sum(r[1] for r in results)}, "
          f"{pipe.depth:,} left in the queue (dropped, not drained)", flush=True)
    print(f"soak {runner.tally.summary(pipe.processed)}", flush=True)
    runner.call(_drop_queue(pipe))


async def _drop_queue(pipe: Any) -> None:
    """End a soak without draining a full queue (minutes on a busy machine): the bench's own shortcut."""
    pipe._queue.clear()
    pipe._depth = 0


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
    tally = wl.FindingTally()
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
                        tally(det.observe(batch))
                    metrics.tool_calls.add([(call.agent_id, call.server, call.tool)])
                    metrics.spans_received.labels("naive").inc()
        lags.append(time.perf_counter() - arrived)
    elapsed = time.perf_counter() - t0
    lags.sort()
    return {"spans": len(singles), "seconds": elapsed, "spans_per_s": len(singles) / elapsed,
            "lag_p50_ms": 1000 * lags[len(lags) // 2], "lag_p99_ms": 1000 * lags[int(len(lags) * 0.99)], "retries": 0,
            "findings": tally.summary(len(singles))}


def calibrate(bodies: list[bytes]) -> float:
    """Bare protobuf parse rate right now, to compare this machine's state with the issue's ~2 M spans/s."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        for body in bodies:
            n += len(ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans)
    return n / (time.perf_counter() - t0)


def fmt(name: str, r: dict[str, Any]) -> str:
    return (f"{name:<34} {r['spans']:>9,.0f} spans {r['seconds']:>6.2f} s {r['spans_per_s']:>10,.0f} spans/s"
            f"   lag p50 {r['lag_p50_ms']:>7.1f} ms  p99 {r['lag_p99_ms']:>7.1f} ms  retries {r['retries']:.0f}"
            + ("   iforest models: {} of {} agents".format(*r["baselines"]) if "baselines" in r else "")
            + f"\n{'':<34} {r['findings']}" + (f"\n{'':<34} {r['cpu']}" if "cpu" in r else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--batch", type=int, default=500, help="spans per request")
    ap.add_argument("--clients", type=int, default=2, help="load generator processes")
    ap.add_argument("--paced-rate", type=float, default=20_000, help="spans/s for the lag run")
    ap.add_argument("--profile", action="store_true", help="cProfile the daemon thread during the HTTP run")
    ap.add_argument("--only", choices=["http", "grpc", "paced", "naive"], action="append")
    ap.add_argument("--soak", type=float, metavar="SECONDS", help="instead: one long OTLP/HTTP run with per-interval figures")
    ap.add_argument("--interval", type=float, default=20.0, help="seconds between soak samples")
    ap.add_argument("--workload", choices=wl.WORKLOADS, default=wl.DEFAULT_WORKLOAD,
                    help="fleet (agents with routines, rare anomalies), random (make_body) or routine "
                         "(ingest_kafka.py's old workload): see bench/workloads.py")
    ap.add_argument("--anomaly-rate", type=float, default=0.001, help="fleet: share of calls in injected anomalies")
    ap.add_argument("--pool-spans", type=int, default=50_000,
                    help="fleet: calls encoded per load process (re-stamped per request, replayed when used up); "
                         "routine: spans in the replayed bodies")
    ap.add_argument("--traffic", choices=["live", "replay"], default="live",
                    help="soak traffic of --workload random: live (advancing times, fresh ids, sessions that end) "
                         "or replay (the same 8 bodies); a fleet is always live")
    ap.add_argument("--census", action="store_true", help="soak: also print the most common GC-tracked types per sample")
    ap.add_argument("--honour-retry-after", action="store_true",
                    help="soak: resend a refused request after the daemon's Retry-After, not after 20 ms")
    ap.add_argument("--otlp-processes", type=int, default=0, help="OTLP/HTTP worker processes (config otlp_processes)")
    ap.add_argument("--warm", choices=["baselines", "none"], default="baselines",
                    help="before the max-rate runs: baselines (default) drives load until every agent is scored "
                         "with an IsolationForest model of its own, the daemon's steady state; none measures a "
                         "fresh daemon, whose forest scores almost nothing yet (cheaper, and not steady state)")
    ap.add_argument("--warm-limit", type=float, default=300.0, help="seconds the baselines warm-up may take at most")
    ap.add_argument("--cpu-affinity", default="auto",
                    help="the daemon's config cpu_affinity (auto: its threads on one CPU; off: the OS places them)")
    ap.add_argument("--queue-max-wait-ms", type=int,
                    help="the daemon's pipeline.queue_max_wait_ms (default: the config's; 0: only queue_max_spans "
                         "bounds the queue)")
    ap.add_argument("--batch-max-size", type=int, help="the daemon's pipeline.batch_max_size (default: the config's)")
    ap.add_argument("--retrain-max-share", type=float,
                    help="the daemon's pipeline.retrain_max_share (default: the config's): how much of the refit "
                         "worker's core refits may take")
    args = ap.parse_args(argv)
    only = set(args.only or ["http", "grpc", "paced", "naive"])
    t = time.process_time()

    def make_traffic(batch: int) -> list[Any]:
        return wl.load_traffic(args.workload, args.clients, batch, args.pool_spans, anomaly_rate=args.anomaly_rate)

    traffics = make_traffic(args.batch)
    bodies = wl.first_bodies(traffics, 8 * args.batch, args.batch)
    print(f"toolwatch ingest bench: {os.cpu_count()} CPUs, {args.batch} spans/request, {args.clients} load processes, "
          f"13 attributes/span, detectors: {[d.name for d in build_detectors(Config())]}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"workload {wl.describe(args.workload, args.anomaly_rate, args.pool_spans)} "
          f"(built in {time.process_time() - t:.1f} s CPU)")
    print(f"calibration: bare protobuf parse {calibrate(bodies):,.0f} spans/s (issue's reference machine, idle: ~2,000,000)",
          flush=True)
    if args.soak:
        with tempfile.TemporaryDirectory() as tmp:
            runner = DaemonRunner(str(Path(tmp) / "data"), args.otlp_processes, args.cpu_affinity, args.queue_max_wait_ms,
                                  args.batch_max_size, args.retrain_max_share)
            print(f"cpu_affinity: {runner.daemon.affinity.choice.reason}", flush=True)
            try:
                if args.workload == "random":
                    label = args.traffic
                    soak_traffic = ([LiveTraffic(bodies, 1000 + k) for k in range(args.clients)] if args.traffic == "live"
                                    else [Replay(bodies)] * args.clients)
                else:
                    label, soak_traffic = args.workload, [t.fresh() for t in traffics]
                soak(runner, soak_traffic, args.soak, args.interval, label, args.census, args.honour_retry_after)
            finally:
                runner.close()
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        runner = DaemonRunner(str(Path(tmp) / "data"), args.otlp_processes, args.cpu_affinity, args.queue_max_wait_ms,
                              args.batch_max_size, args.retrain_max_share)
        print(f"cpu_affinity: {runner.daemon.affinity.choice.reason}", flush=True)
        try:
            run_load(runner, "http", traffics, args.batch, 1, 0.5, None)  # warm-up
            if args.warm == "baselines":
                warm_baselines(runner, traffics, args.batch, args.clients, args.warm_limit)
            if "http" in only:
                prof = cProfile.Profile() if args.profile else None
                if prof:
                    runner.call(_enable(prof))
                print(fmt("OTLP/HTTP protobuf, max rate", run_load(runner, "http", traffics, args.batch, args.clients, args.seconds, None)),
                      flush=True)
                if prof:
                    runner.call(_disable(prof))
                    pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
            if "grpc" in only:
                print(fmt("OTLP/gRPC, max rate", run_load(runner, "grpc", traffics, args.batch, args.clients, args.seconds, None)),
                      flush=True)
            if "paced" in only:
                paced = make_traffic(250)
                r = run_load(runner, "http", paced, 250, args.clients, args.seconds, args.paced_rate)
                print(fmt(f"OTLP/HTTP paced at {args.paced_rate:,.0f}/s", r))
        finally:
            runner.close()
    if "naive" in only:
        print(fmt("naive one-span-at-a-time", naive(wl.first_bodies(traffics, 20_000, args.batch), 20_000)))
    return 0


async def _enable(prof: cProfile.Profile) -> None:
    prof.enable()


async def _disable(prof: cProfile.Profile) -> None:
    prof.disable()


if __name__ == "__main__":
    sys.exit(main())
