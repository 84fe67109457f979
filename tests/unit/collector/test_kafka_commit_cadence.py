"""Snapshot and commit cadence of the Kafka receiver: a snapshot is asked for when the commit interval
is due (never again straight after each save), and never more often than ``SNAPSHOT_COST_FACTOR`` times what the last save took."""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

import pytest
from kafka.structs import TopicPartition

from toolwatch.collector.config import KafkaConfig
from toolwatch.collector.metrics import Metrics
from toolwatch.collector.receivers.kafka import EVENTS_PER_POLL, SNAPSHOT_COST_FACTOR, KafkaReceiver, _Record

TP0 = TopicPartition("otlp_spans", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self) -> None:
        self.clock = Clock()
        self.requests: list[float] = []
        self.commits: list[dict[int, int]] = []
        self.pipeline = SimpleNamespace(detectors=[], batch_listeners=[], state_listeners=[], saved_seq=0, done_seq=0,
                                        request_snapshot=lambda: self.requests.append(self.clock.now))
        self.rx = KafkaReceiver(KafkaConfig(enabled=True, commit_interval_ms=1000), None, self.pipeline, Metrics(),
                                SimpleNamespace(flush=lambda timeout_s=None: None), lambda: None, max_record_bytes=1 << 20,
                                clock=self.clock)
        self.rx._loop = SimpleNamespace(call_soon_threadsafe=lambda fn: fn())
        self.consumer = SimpleNamespace(
            commit=lambda offsets: self.commits.append({tp.partition: om.offset for tp, om in offsets.items()}))

    def handed_over(self, ticket: int, next_offset: int) -> None:
        self.rx._uncommitted.append((ticket, TP0, next_offset))

    def saved(self, seq: int, start: float, end: float, done: int | None = None) -> None:
        """What the pipeline does on its loop: a batch ends at ``start``, the state save runs until ``end``."""
        self.clock.now = start
        for listener in self.pipeline.batch_listeners:
            listener(None, [])
        self.clock.now = end
        self.pipeline.saved_seq, self.pipeline.done_seq = seq, seq if done is None else done
        self.pipeline.last_save_s = end - start  # as Pipeline measures it (the save itself, not the wait for it)
        for listener in self.pipeline.state_listeners:
            listener(seq)

    def step(self, at: float) -> None:
        self.clock.now = at
        self.rx._maybe_commit(self.consumer)


def test_snapshot_is_asked_for_when_due_and_its_save_commits_at_once_without_asking_again():
    h = Harness()
    h.handed_over(1, 5)
    h.pipeline.done_seq = 1
    h.step(0.5)
    assert h.requests == [] and h.commits == []  # processed, but the interval is not due yet
    h.step(1.0)
    assert h.requests == [1.0] and h.commits == []  # due: snapshot asked for; nothing saved yet
    h.handed_over(2, 9)
    h.saved(1, 1.02, 1.05, done=2)  # a quick save: the commit interval, not its cost, sets the cadence
    h.step(1.1)
    assert h.commits == [{0: 5}]  # saved: what it covers is committed at once...
    assert h.requests == [1.0]  # ...and no new snapshot straight away, although ticket 2 is done
    assert list(h.rx._uncommitted) == [(2, TP0, 9)]
    h.step(1.9)
    assert h.requests == [1.0]
    h.step(2.0)
    assert h.requests == [1.0, 2.0]  # the next one when the interval is due again


def test_a_slow_save_spaces_the_next_snapshots_out_but_waiting_for_it_does_not():
    h = Harness()
    h.handed_over(1, 5)
    h.pipeline.done_seq = 1
    h.step(1.0)
    h.handed_over(2, 9)
    h.saved(1, 3.0, 3.5, done=2)  # asked at 1.0, started at 3.0 after the batch in flight; the save took 0.5 s
    h.step(3.6)
    assert h.commits == [{0: 5}]
    spacing = SNAPSHOT_COST_FACTOR * 0.5
    h.step(1.0 + spacing - 0.01)
    assert h.requests == [1.0]
    h.step(1.0 + spacing)
    assert h.requests == [1.0, 1.0 + spacing]


def test_a_forced_commit_commits_what_is_saved_and_asks_for_the_rest():
    h = Harness()
    h.handed_over(1, 5)
    h.handed_over(2, 7)
    h.pipeline.saved_seq, h.pipeline.done_seq = 1, 2
    h.clock.now = 0.1
    h.rx._maybe_commit(h.consumer, force=True)
    assert h.commits == [{0: 5}] and h.requests == [0.1]


def test_polls_are_sized_in_spans_so_a_poll_of_large_records_is_decoded_well_within_the_poll_interval():
    h = Harness()
    asked: list[int] = []
    size = [200]

    def poll(timeout_ms, max_records):
        asked.append(max_records)
        return {TP0: [SimpleNamespace(offset=i) for i in range(min(max_records, 50))]}

    consumer = SimpleNamespace(poll=poll, commit=h.consumer.commit)
    h.rx._decode = lambda tp, rec: _Record(tp, rec.offset, calls=[None] * size[0])  # records of `size` spans
    h.rx._offer = lambda: h.rx._pending.clear()
    for _ in range(30):
        h.rx._step(consumer)
    assert asked[0] == h.rx.cfg.max_poll_records  # nothing seen yet: records may hold single spans
    assert asked[-1] == pytest.approx(EVENTS_PER_POLL / 200, rel=0.01)  # ~20,000 spans a poll, not 2,000 records
    size[0] = 1
    for _ in range(30):
        h.rx._step(consumer)
    assert asked[-1] == h.rx.cfg.max_poll_records
