"""Alerting throughput: queueing alerts into the durable outbox, and draining it to a local receiver.

Prints figures and compares each against a naive baseline measured in the same run:
  1. AlertRouter (alerts + outbox rows in one transaction per batch) vs one commit per alert.
  2. WebhookSink delivery, one alert per request (toolwatch format) vs digests (alertmanager
     format, up to 50 alerts per request) to a real local HTTP receiver.
Run: .venv/bin/python bench/alerting_outbox.py [N]
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

from toolwatch.collector.alerts import AlertRouter
from toolwatch.collector.config import WebhookConfig
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.sinks import Sink
from toolwatch.collector.sinks.webhook import WebhookSink
from toolwatch.collector.store import Store
from toolwatch.detectors.events import Finding


class Outbox(Sink):
    name, durable = "ops", True

    def emit(self, alerts):
        pass


def findings(n: int) -> list[Finding]:
    return [
        Finding(detector="new_tool", severity="high", agent_id=f"agent{i % 20}", reason="first use", time_ns=i,
                tool=f"t{i}", span_ids=(f"s{i}",), dedup_key=f"k{i}")
        for i in range(n)
    ]


def bench_router(n: int, tmp: Path) -> tuple[float, float]:
    store = Store(tmp / "router.db")
    router = AlertRouter(store, Metrics(), [Outbox()], group_window_ns=0)
    fs = findings(n)
    t0 = time.perf_counter()
    for i in range(0, n, 500):
        router.route(fs[i : i + 500])
    ours = time.perf_counter() - t0
    assert store.outbox_depth("ops") == n
    store.close()
    # Naive: the same rows, one autocommitted statement each (WAL, synchronous=NORMAL as ours).
    db = sqlite3.connect(str(tmp / "naive.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE alerts(id TEXT PRIMARY KEY, finding TEXT)")
    db.execute("CREATE TABLE outbox(seq INTEGER PRIMARY KEY, sink TEXT, alert_id TEXT)")
    t0 = time.perf_counter()
    for f in fs:
        db.execute("INSERT INTO alerts VALUES (?,?)", (f.dedup_key, json.dumps(f.to_dict())))
        db.execute("INSERT INTO outbox(sink, alert_id) VALUES (?,?)", ("ops", f.dedup_key))
    naive = time.perf_counter() - t0
    db.close()
    return ours, naive


async def bench_delivery(n: int, tmp: Path, fmt: str) -> tuple[float, int]:
    requests = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal requests
        await request.read()
        requests += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    store = Store(tmp / f"deliver-{fmt}.db")
    metrics = Metrics()
    conf = WebhookConfig(url=f"http://127.0.0.1:{port}/hook", name="ops", format=fmt, secret="k")
    conf.validate("webhooks[0]")
    sink = WebhookSink(conf, store, metrics, b"k")
    AlertRouter(store, metrics, [sink], group_window_ns=0).route(findings(n))
    t0 = time.perf_counter()
    while store.outbox_depth("ops"):
        await sink.deliver_due()
    took = time.perf_counter() - t0
    await sink.shutdown()
    await runner.cleanup()
    store.close()
    return took, requests


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ours, naive = bench_router(n, tmp)
        print(f"queue {n} alerts into the outbox: router {n / ours:,.0f} alerts/s ({ours:.3f}s); "
              f"naive one-commit-per-alert {n / naive:,.0f} alerts/s ({naive:.3f}s); speed-up x{naive / ours:.1f}")
        m = min(n, 1000)
        single, req1 = asyncio.run(bench_delivery(m, tmp, "toolwatch"))
        digest, req2 = asyncio.run(bench_delivery(m, tmp, "alertmanager"))
        print(f"deliver {m} alerts to a local receiver: one per request {m / single:,.0f} alerts/s ({req1} requests); "
              f"digest {m / digest:,.0f} alerts/s ({req2} requests); speed-up x{single / digest:.1f}")


if __name__ == "__main__":
    main()
