"""The Kafka receiver writes the touched agents' state (with the offset it covers) before it commits."""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

import pytest
from kafka.structs import TopicPartition

from toolwatch.collector.config import KafkaConfig
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.receivers.kafka import KafkaReceiver
from toolwatch.detectors.events import Batch, ToolCall
from toolwatch.detectors.new_tool import NewToolConfig, NewToolDetector

TP0, TP1 = TopicPartition("otlp_spans", 0), TopicPartition("otlp_spans", 1)


class Journal:
    """Records changelog writes and offset commits in the order they happen; writes fail on cue."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.fail_writes = False

    def write(self, partition, states, offset=None):
        if self.fail_writes:
            raise OSError("broker unreachable")
        self.events.append(("write", partition, {a: s["new_tool"]["calls"] for a, s in states.items()}, offset))

    def commit(self, offsets):
        self.events.append(("commit", {tp.partition: om.offset for tp, om in offsets.items()}))


def receiver(journal: Journal, det: NewToolDetector) -> KafkaReceiver:
    pipeline = SimpleNamespace(detectors=[det], batch_listeners=[], state_listeners=[], saved_seq=0, done_seq=0,
                               last_save_s=0.0)
    rx = KafkaReceiver(KafkaConfig(enabled=True), None, pipeline, Metrics(), SimpleNamespace(flush=lambda timeout_s=None: None),
                       lambda: None, max_record_bytes=1 << 20, changelog=journal)
    rx._agent_partition.update({"a": 0, "b": 1})
    return rx


def processed(rx: KafkaReceiver, det: NewToolDetector, seq: int, *agents: str) -> None:
    """What the pipeline does: observe a batch, tell its listeners, snapshot at ticket ``seq``."""
    batch = Batch(calls=[ToolCall(time_ns=seq * 10 + i, agent_id=a, tool="read") for i, a in enumerate(agents)])
    det.observe(batch)
    for listener in rx.pipeline.batch_listeners:
        listener(batch, [])
    rx.pipeline.saved_seq = rx.pipeline.done_seq = seq
    for listener in rx.pipeline.state_listeners:
        listener(seq)


def test_state_is_written_with_its_partition_offset_before_the_commit_of_exactly_what_it_covers():
    journal, det = Journal(), NewToolDetector(NewToolConfig(min_calls=100))
    consumer = SimpleNamespace(commit=journal.commit)
    rx = receiver(journal, det)
    rx._uncommitted = deque([(1, TP0, 5), (2, TP1, 3)])
    processed(rx, det, 2, "a", "b")
    rx._uncommitted.append((3, TP0, 9))  # polled and handed over, not yet in a snapshot
    rx._maybe_commit(consumer, force=True)
    writes, commit = journal.events[:-1], journal.events[-1]  # partitions are written in any order, then the commit
    assert sorted(writes) == [("write", 0, {"a": 1}, 5), ("write", 1, {"b": 1}, 3)]
    assert commit == ("commit", {0: 5, 1: 3})
    assert list(rx._uncommitted) == [(3, TP0, 9)]

    journal.events.clear()
    processed(rx, det, 3, "a")
    rx._maybe_commit(consumer, force=True)  # b untouched: not rewritten; a's record says it covers p0 up to 9
    assert journal.events == [("write", 0, {"a": 2}, 9), ("commit", {0: 9})]


def test_a_failed_state_write_commits_nothing_and_is_retried():
    journal, det = Journal(), NewToolDetector(NewToolConfig(min_calls=100))
    consumer = SimpleNamespace(commit=journal.commit)
    rx = receiver(journal, det)
    rx._uncommitted = deque([(1, TP0, 4)])
    processed(rx, det, 1, "a")
    journal.fail_writes = True
    rx._maybe_commit(consumer, force=True)
    assert journal.events == [] and list(rx._uncommitted) == [(1, TP0, 4)]
    assert rx.metrics.registry.get_sample_value("toolwatch_kafka_commits_total", {"outcome": "failed"}) == 1
    journal.fail_writes = False
    rx._maybe_commit(consumer, force=True)
    assert journal.events == [("write", 0, {"a": 1}, 4), ("commit", {0: 4})]


@pytest.mark.parametrize("offsets, expected", [
    ([5, 6, 7, 3], [True, True, False, False]),  # below the restored offset: already in the state
    ([9, 2], [False, False]),  # at or past it: new input, and the partition is read in order from there
])
def test_redelivered_events_the_restored_state_holds_are_skipped_once(offsets, expected):
    rx = receiver(Journal(), NewToolDetector(NewToolConfig(min_calls=100)))
    rx._skip["a"] = 7
    assert [rx._in_restored_state("a", off) for off in offsets] == expected
    assert not rx._in_restored_state("b", 0)
    assert rx.metrics.registry.get_sample_value("toolwatch_kafka_state_skipped_events_total") == expected.count(True)


class QueueOnly:
    """A pipeline queue that accepts up to ``cap`` events (its own limit) and never processes them."""

    def __init__(self, cap: int) -> None:
        self.cap, self.depth, self.last_ticket = cap, 0, 0

    def submit(self, calls, listings) -> bool:
        if self.depth + len(calls) > self.cap:
            return False
        self.depth += len(calls)
        self.last_ticket += 1
        return True


async def test_with_a_changelog_the_in_flight_spans_are_bounded_so_a_rebalance_drains_quickly():
    rx = receiver(Journal(), NewToolDetector(NewToolConfig(min_calls=100)))
    queue = QueueOnly(cap=1_000_000)
    rx.pipeline = queue
    rx.inflight_max_spans = 2000
    record = ([ToolCall(time_ns=i, agent_id="a", tool="read") for i in range(600)], [])
    tickets, never_fits = await rx._accept([record] * 10)
    assert len(tickets) == 3 and queue.depth == 1800 and not never_fits  # the 4th would pass 2000: wait
    queue.depth = 0
    big = ([ToolCall(time_ns=i, agent_id="a", tool="read") for i in range(5000)], [])
    tickets, _ = await rx._accept([big])
    assert len(tickets) == 1  # larger than the bound but the pipeline is idle: taken, never stuck
