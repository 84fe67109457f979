"""Kafka receiver against a real Kafka-protocol broker: both encodings, dead letters, backpressure."""

from __future__ import annotations

import json
import logging
import os
import signal
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer

from helpers.procs import wait_until
from helpers.daemon import DaemonThread, make_config
from helpers.kafka_broker import kafka_broker  # noqa: F401  (fixture)
from helpers.otlp_calls import Call, request, to_otlp_json, workload
from toolwatch.collector.config import KafkaConfig
from toolwatch.collector.receivers.dead_letter import REASON_HEADER, SOURCE_HEADER, DeadRecord, KafkaDeadLetter
from toolwatch.detectors.events import Batch, ToolCall
from toolwatch.detectors.new_tool import NewToolConfig, NewToolDetector


def _wait(pred, timeout=30.0, what="condition"):
    wait_until(pred, timeout, what)


def kafka_cfg(broker, **kw) -> KafkaConfig:
    base = dict(enabled=True, bootstrap_servers=broker.bootstrap, max_poll_interval_ms=1000, session_timeout_ms=6000, commit_interval_ms=100)
    base.update(kw)
    return KafkaConfig(**base)


def produce(broker, topic, records) -> dict[int, int]:
    """Send records; return each partition's next offset after them (what a full commit must reach)."""
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    futures = [producer.send(topic, key=key, value=value) for key, value in records]
    producer.flush()
    ends: dict[int, int] = {}
    for fut in futures:
        md = fut.get(10)
        ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
    producer.close()
    return ends


def expected_new_tool(calls: list[Call], min_calls: int) -> set[tuple[str, str]]:
    det = NewToolDetector(NewToolConfig(min_calls=min_calls))
    batch = Batch(calls=[ToolCall(time_ns=c.time_ns, agent_id=c.agent, tool=c.tool, server=c.server) for c in calls])
    return {(f.agent_id, f.tool) for f in det.observe(batch)}


@pytest.mark.parametrize("decode_processes", [0, 1])
@pytest.mark.parametrize("encoding", ["otlp_proto", "otlp_json"])
def test_spans_from_kafka_are_processed_alerted_and_committed(tmp_path, kafka_broker, encoding, decode_processes):
    kafka_broker.create_topic("otlp_spans", partitions=2)
    calls = workload(agents=3, calls_per_agent=12, new_tool_every=10)
    encode = (lambda r: r.SerializeToString()) if encoding == "otlp_proto" else to_otlp_json
    records = []
    for agent in sorted({c.agent for c in calls}):  # key = agent id: one agent's spans stay in order
        mine = [c for c in calls if c.agent == agent]
        records += [(agent.encode(), encode(request(mine[i : i + 4]))) for i in range(0, len(mine), 4)]
    ends = produce(kafka_broker, "otlp_spans", records)

    cfg = make_config(tmp_path, otlp_processes=0,
                      kafka=kafka_cfg(kafka_broker, encoding=encoding, decode_processes=decode_processes))
    cfg.detectors = {"new_tool": {"min_calls": 5}}
    with DaemonThread(cfg) as d:
        rx = d.daemon.receiver("kafka")
        assert d.daemon.decode_processes == decode_processes and (rx.decoders is not None) == bool(decode_processes)
        _wait(lambda: rx.committed_records == len(records), what="all records committed")
        assert d.metric("toolwatch_spans_received_total", {"receiver": "kafka"}) == len(calls)
        assert d.metric("toolwatch_kafka_records_total", {"outcome": "accepted"}) == len(records)
        got = {(a.agent_id, a.finding["tool"]) for a in d.daemon.store.list_alerts(limit=1000)}
        assert got == expected_new_tool(calls, 5) and got  # the same alerts a direct run of the detector gives
        # The group's committed position is the end of every partition that got records.
        consumer = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, group_id="toolwatch", enable_auto_commit=False)
        committed = {tp.partition: consumer.committed(tp) for tp in rx.assigned if tp.partition in ends}
        consumer.close()
        assert committed == ends
        if decode_processes:  # the workers decoded every record: none fell back to the consumer thread
            assert rx.decoders.fallbacks == 0 and all(rx.decoders.pids)
            pinned = d.daemon.affinity.choice.cpus
            if pinned:  # started from the pinned consumer thread, with the mask from before the pin
                assert os.sched_getaffinity(rx.decoders.pids[0]) == os.sched_getaffinity(0) != set(pinned)


def test_a_killed_decode_worker_loses_no_record_and_is_started_again(tmp_path, kafka_broker):
    kafka_broker.create_topic("otlp_spans", partitions=2)
    calls = workload(agents=3, calls_per_agent=24, new_tool_every=10)

    def records_of(part: list[Call]) -> list[tuple[bytes, bytes]]:
        out = []
        for agent in sorted({c.agent for c in part}):
            mine = [c for c in part if c.agent == agent]
            out += [(agent.encode(), request(mine[i : i + 4]).SerializeToString()) for i in range(0, len(mine), 4)]
        return out

    half = len(calls) // 2  # each agent's first twelve calls, then its last twelve
    first, second = records_of(calls[:half]), records_of(calls[half:])
    cfg = make_config(tmp_path, otlp_processes=0, kafka=kafka_cfg(kafka_broker, decode_processes=1))
    cfg.detectors = {"new_tool": {"min_calls": 5}}
    with DaemonThread(cfg) as d:
        rx = d.daemon.receiver("kafka")
        _wait(lambda: rx.decoders.pids[0] is not None and rx.assigned, what="the decode worker and the partitions")
        killed = rx.decoders.pids[0]
        os.kill(killed, signal.SIGKILL)
        produce(kafka_broker, "otlp_spans", first)
        _wait(lambda: rx.committed_records == len(first), what="the first records committed")
        handed_back = d.metric("toolwatch_kafka_decode_fallback_records_total")
        assert handed_back >= 1  # the dead worker's run, decoded in the consumer thread
        time.sleep(rx.decoders.restart_delay_s + 0.5)  # a new worker starts at the first poll after the delay
        produce(kafka_broker, "otlp_spans", second)
        _wait(lambda: rx.committed_records == len(first) + len(second), what="every record committed")
        assert rx.decoders.restarts == 1 and rx.decoders.pids[0] not in (None, killed)
        assert d.metric("toolwatch_kafka_decode_fallback_records_total") == handed_back  # the new worker took the rest
        assert d.metric("toolwatch_spans_received_total", {"receiver": "kafka"}) == len(calls)
        got = {(a.agent_id, a.finding["tool"]) for a in d.daemon.store.list_alerts(limit=1000)}
        assert got == expected_new_tool(calls, 5) and got


@pytest.mark.parametrize("decode_processes", [0, 1])
def test_poison_record_goes_to_dead_letter_topic_and_partition_keeps_flowing(tmp_path, kafka_broker, decode_processes):
    kafka_broker.create_topic("otlp_spans", partitions=1)
    kafka_broker.create_topic("otlp_spans_dlq", partitions=1)
    good1 = request([Call("a", "files", "read_file", n) for n in range(3)]).SerializeToString()
    good2 = request([Call("a", "files", "read_file", n) for n in range(3, 6)]).SerializeToString()
    poison = b"\xff\xfe definitely not OTLP"
    produce(kafka_broker, "otlp_spans", [(b"a", good1), (b"a", poison), (b"a", b'{"resourceSpans": 7}'), (b"a", good2)])

    cfg = make_config(tmp_path, otlp_processes=0, kafka=kafka_cfg(
        kafka_broker, dead_letter_topic="otlp_spans_dlq", encoding="auto", decode_processes=decode_processes))
    with DaemonThread(cfg) as d:
        rx = d.daemon.receiver("kafka")
        _wait(lambda: rx.committed_records == 4, what="all four records committed")
        assert d.metric("toolwatch_spans_received_total", {"receiver": "kafka"}) == 6  # both good records
        assert d.metric("toolwatch_kafka_records_total", {"outcome": "dead_letter"}) == 2
        assert d.metric("toolwatch_requests_rejected_total", {"receiver": "kafka", "reason": "bad_protobuf"}) == 1
        assert d.metric("toolwatch_requests_rejected_total", {"receiver": "kafka", "reason": "bad_json"}) == 1

    dlq = KafkaConsumer(
        "otlp_spans_dlq", bootstrap_servers=kafka_broker.bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=5000
    )
    dead = []
    for rec in dlq:
        dead.append(rec)
        if len(dead) == 2:
            break
    dlq.close()
    assert [r.value for r in dead] == [poison, b'{"resourceSpans": 7}']
    headers = [dict(r.headers) for r in dead]
    assert [h[REASON_HEADER] for h in headers] == [b"bad_protobuf", b"bad_json"]
    assert [h[SOURCE_HEADER] for h in headers] == [b"otlp_spans/0/1", b"otlp_spans/0/2"]
    assert all(r.key == b"a" for r in dead)


def test_dead_letter_file_when_no_topic_is_configured(tmp_path, kafka_broker):
    kafka_broker.create_topic("otlp_spans", partitions=1)
    produce(kafka_broker, "otlp_spans", [(b"k", b""), (b"k", request([Call("a", "s", "t", 1)]).SerializeToString())])
    cfg = make_config(tmp_path, otlp_processes=0, kafka=kafka_cfg(kafka_broker))
    with DaemonThread(cfg) as d:
        rx = d.daemon.receiver("kafka")
        _wait(lambda: rx.committed_records == 2, what="both records committed")
        assert d.metric("toolwatch_spans_received_total", {"receiver": "kafka"}) == 1
    path = tmp_path / "data" / "kafka-dead-letter.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(x["source"], x["reason"]) for x in lines] == [("otlp_spans/0/0", "empty")]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_full_pipeline_pauses_partitions_then_catches_up(tmp_path, kafka_broker):
    kafka_broker.create_topic("otlp_spans", partitions=1)
    calls = workload(agents=2, calls_per_agent=200)
    records = [(b"k", request(calls[i : i + 50]).SerializeToString()) for i in range(0, len(calls), 50)]
    produce(kafka_broker, "otlp_spans", records)
    cfg = make_config(tmp_path, otlp_processes=0, kafka=kafka_cfg(kafka_broker))
    cfg.pipeline.batch_max_size = 50
    cfg.pipeline.queue_max_spans = 100  # two records fit: the receiver must wait for the detectors
    with DaemonThread(cfg) as d:
        rx = d.daemon.receiver("kafka")
        _wait(lambda: rx.committed_records == len(records), what="all records committed")
        assert rx.pauses >= 1, "the receiver never paused although the queue holds only two records"
        assert d.metric("toolwatch_spans_received_total", {"receiver": "kafka"}) == len(calls)
        assert d.daemon.pipeline.processed == len(calls)


def test_a_stop_while_the_broker_is_down_is_bounded_and_commits_nothing(tmp_path, kafka_broker, caplog):
    """The stop's last commit and the consumer's close waited for the broker up to its request
    timeout each (30 s), and the receiver's shutdown gave up on its thread silently after 45 s: with
    the broker down a stop took longer than a service manager's stop timeout (30 s in Kubernetes),
    which then killed the daemon before it drained, saved and closed. Now both are bounded, and
    what was not committed is said to be redelivered."""
    kafka_broker.create_topic("otlp_spans", partitions=1)
    calls = workload(agents=2, calls_per_agent=8, new_tool_every=5)
    produce(kafka_broker, "otlp_spans", [(c.agent.encode(), request([c]).SerializeToString()) for c in calls])
    cfg = make_config(tmp_path, kafka=kafka_cfg(kafka_broker, commit_interval_ms=600_000))
    d = DaemonThread(cfg)
    with caplog.at_level(logging.WARNING, "toolwatch.receiver.kafka"):
        with d:
            rx = d.daemon.receiver("kafka")
            _wait(lambda: d.daemon.pipeline.processed == len(calls), what="all calls processed")
            assert rx.committed_records == 0  # nothing committed yet: the stop's commit is the first
            os.kill(kafka_broker._proc.pid, signal.SIGSTOP)  # unresponsive: connections stay open, unanswered
            t0 = time.monotonic()
            d.call(d.daemon.shutdown(), timeout=120)
            took = time.monotonic() - t0
            d.daemon = None
    assert rx.committed_records == 0
    assert "offset commit failed at stop" in caplog.text and "redelivered after the restart" in caplog.text
    assert took < 20, f"the stop took {took:.1f} s with the broker down"


def test_a_dead_letter_flush_waits_no_longer_than_it_is_given_when_the_broker_hangs(kafka_broker):
    """The stop's last commit flushes dead letters first; with an unresponsive broker that flush (and
    the producer's close) waited the producer's 30 s each, so a stop outlasted a service manager's
    stop timeout. Given a bound, both give up within it and say so (nothing is committed)."""
    from kafka.errors import KafkaTimeoutError

    kafka_broker.create_topic("dlq", partitions=1)
    made: list[KafkaProducer] = []  # kept, to be closed once the broker answers again (see finally)

    def producer() -> KafkaProducer:
        made.append(KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all"))
        return made[-1]

    dead = KafkaDeadLetter(producer, "dlq")
    record = DeadRecord("otlp_spans", 0, 7, b"k", b"\xff not OTLP", "bad_protobuf", "not a protobuf message")
    dead.send(record)
    dead.flush(1.0)  # the broker answers: durable at once
    os.kill(kafka_broker._proc.pid, signal.SIGSTOP)  # unresponsive: connections stay open, unanswered
    try:
        dead.send(record)
        t0 = time.monotonic()
        with pytest.raises(KafkaTimeoutError):
            dead.flush(1.0)
        flushed = time.monotonic() - t0
        t0 = time.monotonic()
        with pytest.raises(KafkaTimeoutError):  # the unsent record: the receiver logs it, uncommitted
            dead.close(1.0)
        closed = time.monotonic() - t0
    finally:
        os.kill(kafka_broker._proc.pid, signal.SIGCONT)
        # kafka-python's close gives up at its flush and leaves the sender thread running; left to the
        # garbage collector it failed in __del__ and went on using the random module in later tests.
        for p in made:
            p.close(10)
    assert flushed < 5 and closed < 5, f"flush took {flushed:.1f} s, close {closed:.1f} s with a 1 s bound"
