"""Kafka receiver: consume OTLP spans as a consumer group, at least once, poison records to a dead letter.

Threading: kafka-python is blocking, so one thread owns the consumer (poll, decode, normalise,
commit) and hands records to the pipeline on its event loop (``run_coroutine_threadsafe``). When
the pipeline refuses (queue full) the thread pauses its partitions and keeps polling, so the group
keeps it as a member, until the pipeline takes the records: backpressure, never unbounded memory.

At-least-once: an offset is committed only when every record up to it has been through the
detectors, its alerts are stored with their outbox rows (one SQLite transaction), and detector
state has been snapshotted after it (``Pipeline.saved_seq``). After a crash the daemon restores that
snapshot and the broker redelivers what came after it, so every call is processed at least once and
no baseline misses a call. Redelivered findings get the same alert id, so they are not alerted twice.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from kafka import ConsumerRebalanceListener

from toolwatch.detectors.events import ToolCall, ToolListing

from .. import otlp
from ..config import KafkaConfig
from ..metrics import Metrics
from ..normalize import Normalizer
from ..pipeline import Pipeline
from . import Receiver
from .agent_state_capture import AgentStateCapture
from .dead_letter import DeadLetter, DeadRecord, FileDeadLetter, KafkaDeadLetter
from .decode_workers import DeadValue, DecodeWorkers, Result, Sent
from .kafka_records import decode_record
from .state_changelog import AgentRecord, AgentStates, StateChangelog

log = logging.getLogger("toolwatch.receiver.kafka")
NAME = "kafka"
DEAD_LETTER_FILE = "kafka-dead-letter.jsonl"
SNAPSHOT_COST_FACTOR = 10
"""A state snapshot is requested at most every ``commit_interval_ms`` and at most every this many times
the last save took: snapshots (every detector's state to SQLite) never take more than ~1/10 of the time."""
STOP_TIMEOUT_MS = 5_000
"""How long the stop's dead-letter flush, its last offset commit, the consumer's close and the
dead-letter producer's close may each wait for the broker. The
client's default (``request_timeout_ms``, 30 s) each made a stop with an unresponsive broker outlast
a service manager's stop timeout; what is not committed is redelivered after the restart."""
DECODE_AHEAD = 1
"""Polls whose records stay with the decode workers while the consumer thread polls again: one run
always waits in the worker behind the one it decodes, so it never idles while the consumer thread
waits for the interpreter lock (the detectors hold it most of the time)."""
EVENTS_PER_POLL = 20_000
"""Spans decoded between two polls, at most (about): with records of hundreds of spans, ``max_poll_records``
alone let one poll take longer to decode than ``max_poll_interval_ms`` (the group then evicts the member)."""


@dataclass(slots=True)
class _Record:
    """One polled record, decoded and normalised, waiting for the pipeline to accept it."""

    tp: Any
    offset: int
    calls: list[ToolCall] = field(default_factory=list)
    listings: list[ToolListing] = field(default_factory=list)
    spans: int = 0
    rejected: int = 0

    @property
    def events(self) -> int:
        return len(self.calls) + len(self.listings)


class _Rebalance(ConsumerRebalanceListener):
    """Runs inside ``poll`` on the consumer thread."""

    def __init__(self, receiver: "KafkaReceiver") -> None:
        self.receiver = receiver

    def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        self.receiver._on_revoked(set(revoked))

    def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        self.receiver._on_assigned(set(assigned))

    def on_partitions_lost(self, lost: Iterable[Any]) -> None:
        self.receiver._on_lost(set(lost))


class KafkaReceiver(Receiver):
    """``consumer_factory()`` returns a subscribed-to-nothing ``KafkaConsumer`` (or a compatible object)."""

    name = NAME

    def __init__(
        self,
        cfg: KafkaConfig,
        normalizer: Normalizer,
        pipeline: Pipeline,
        metrics: Metrics,
        dead_letter: DeadLetter,
        consumer_factory: Callable[[], Any],
        *,
        max_record_bytes: int,
        poll_timeout_ms: int = 100,
        settle_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        changelog: StateChangelog | None = None,
        decoders: DecodeWorkers | None = None,
    ) -> None:
        self.cfg = cfg
        self.decoders = decoders
        """Decode and normalise in worker processes (``kafka.decode_processes``); None: in the consumer thread."""
        self.changelog = changelog
        self._agent_partition: dict[str, int] = {}
        """Scale-out: the input partition each agent was last seen on (whose changelog holds its state)."""
        self._capture = AgentStateCapture(pipeline.detectors) if changelog is not None else None
        """Scale-out: agents' state captured at each snapshot, written to the changelog before each commit."""
        if self._capture is not None:
            pipeline.batch_listeners.append(self._capture.on_batch)
            pipeline.state_listeners.append(self._capture.on_saved)
        self._position: dict[int, int] = {}
        """Scale-out: input partition -> next offset the written agent states cover."""
        self._skip: dict[str, int] = {}
        """Scale-out: agent -> input offset below which its restored state already holds its events."""
        self.skipped_events = 0
        self.changelog_agents_written = 0
        self.inflight_max_spans = max(4 * getattr(pipeline, "batch_max_size", 512), 2000) if changelog is not None else 0
        """Scale-out: spans handed to the pipeline but not yet processed, at most (Kafka is the buffer), so a
        rebalance drains in a few batches instead of blocking the group for a whole queue."""
        self.normalizer = normalizer
        self.pipeline = pipeline
        self.metrics = metrics
        self.dead_letter = dead_letter
        self.consumer_factory = consumer_factory
        self.max_record_bytes = max_record_bytes
        self.poll_timeout_ms = poll_timeout_ms
        self.settle_timeout_s = settle_timeout_s
        self.clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._consumer: Any = None
        self._pending: deque[_Record] = deque()
        self._in_decode: deque[tuple[list[tuple[Any, Any]], Sent]] = deque()
        """The last polls' records while the decode workers have them (at most ``DECODE_AHEAD`` after a poll)."""
        self._uncommitted: deque[tuple[int, Any, int]] = deque()  # (ticket, partition, next offset)
        self._ticket = 0
        self._last_request = clock()
        """When the last state snapshot was requested (or the receiver started)."""
        self._snapshot_for = 0
        """The ``done_seq`` the outstanding snapshot request covers; 0 when none is outstanding."""
        self._snapshot_cost = 0.0
        """What the pipeline's last state save cost (``Pipeline.last_save_s``: its time in the daemon, or
        a snapshot process's CPU time, taken from the cores the workers use)."""
        pipeline.state_listeners.append(self._on_saved)
        self._paused = False
        self.assigned: set[Any] = set()
        self.committed_records = 0
        self.pauses = 0
        self._events_per_record = 1.0
        """Running mean of events per record, to size polls in spans rather than records."""

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._thread = threading.Thread(target=self._main, name="toolwatch-kafka", daemon=True)
        self._thread.start()
        log.info("Kafka receiver: topic %s, group %s, brokers %s", self.cfg.topic, self.cfg.group_id, self.cfg.bootstrap_servers)

    async def shutdown(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        await asyncio.get_running_loop().run_in_executor(None, thread.join, self.settle_timeout_s + 15)
        if thread.is_alive():
            log.warning("Kafka receiver: the consumer thread did not stop within %g s; the stop goes on without "
                        "it (records after the last commit are redelivered after the restart)",
                        self.settle_timeout_s + 15)

    # --- the consumer thread ------------------------------------------------------------------
    def _main(self) -> None:
        try:
            if self.decoders is not None:
                self.decoders.start()
            consumer = self._connect()
            if consumer is None:
                return
            self._consumer = consumer
            consumer.subscribe([self.cfg.topic], listener=_Rebalance(self))
            while not self._stop.is_set():
                self._step(consumer)
            self._settle(consumer)
        except Exception:
            log.exception("Kafka receiver stopped on an unexpected error; offsets after the last commit will be redelivered")
        finally:
            consumer, self._consumer = self._consumer, None
            if consumer is not None:
                try:
                    consumer.close(autocommit=False, timeout_ms=STOP_TIMEOUT_MS)
                except Exception:
                    log.exception("Kafka consumer did not close cleanly")
            try:
                self.dead_letter.close(STOP_TIMEOUT_MS / 1000)  # the receiver is stopping: bounded as the commit
            except Exception:
                log.exception("dead letter did not close cleanly")
            if self.decoders is not None:
                try:
                    self.decoders.close()
                except Exception:
                    log.exception("Kafka decode workers did not stop cleanly")

    def _connect(self) -> Any:
        delay = 0.5
        while not self._stop.is_set():
            try:
                return self.consumer_factory()
            except Exception as exc:  # NoBrokersAvailable and friends: the broker may come up later
                log.warning("Kafka: cannot reach %s (%s); retrying in %.1fs", self.cfg.bootstrap_servers, exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
        return None

    def _step(self, consumer: Any) -> None:
        if self._pending:
            self._offer()
        self._set_paused(consumer, bool(self._pending))
        polled = consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=self._poll_records())
        got = [(tp, rec) for tp, records in polled.items() for rec in records]
        if self.decoders is None:
            records = [self._decode(tp, rec) for tp, rec in got]
        else:  # the workers decode this poll's records while the last ones' go to the pipeline
            if got:
                self._in_decode.append((got, self.decoders.send([rec.value for _tp, rec in got])))
            records = self._decoded(keep=DECODE_AHEAD if got else 0)
        self._pending.extend(records)
        n, events = len(records), sum(r.events for r in records)
        if n:
            self._events_per_record = 0.8 * self._events_per_record + 0.2 * max(1.0, events / n)
        if self._pending:
            self._offer()
        self._maybe_commit(consumer)

    def _poll_records(self) -> int:
        """``max_poll_records``, fewer when records are large: a poll's worth is decoded in about a second."""
        return max(1, min(self.cfg.max_poll_records, int(EVENTS_PER_POLL / self._events_per_record)))

    def _decoded(self, keep: int = 0) -> list[_Record]:
        """The records the decode workers have, decoded, oldest first, leaving the newest ``keep`` polls' with them."""
        out: list[_Record] = []
        while len(self._in_decode) > keep:
            got, sent = self._in_decode.popleft()
            assert self.decoders is not None
            results = self.decoders.receive(sent)
            handed_back = results.count(None)
            if handed_back:
                self.metrics.kafka_decode_fallbacks.inc(handed_back)
            out += [self._decode(tp, rec, res) for (tp, rec), res in zip(got, results)]
        return out

    def _decode(self, tp: Any, rec: Any, done: Result = None) -> _Record:
        """The record as the pipeline takes it; ``done``: a decode worker's result for it (None: decode here)."""
        out = _Record(tp, rec.offset)
        if isinstance(done, DeadValue):
            self._dead(tp, rec, done.reason, done.message)
            return out
        if done is not None:
            norm = done
        else:
            try:
                req = decode_record(rec.value, self.cfg.encoding, self.max_record_bytes, attr_map=True)
            except otlp.DecodeError as exc:
                self._dead(tp, rec, exc.reason, str(exc))
                return out
            norm = self.normalizer.normalize(req)
        out.calls, out.listings, out.spans, out.rejected = norm.calls, norm.listings, norm.spans, norm.rejected
        if self.changelog is not None:
            if self._skip:
                out.calls = [c for c in norm.calls if not self._in_restored_state(c.agent_id, rec.offset)]
                out.listings = [t for t in norm.listings if not self._in_restored_state(t.agent_id, rec.offset)]
            for ev in (*norm.calls, *norm.listings):
                self._agent_partition[ev.agent_id] = tp.partition
        return out

    def _in_restored_state(self, agent: str, offset: int) -> bool:
        """True for an event the agent's restored changelog state already holds (a redelivery after a crash)."""
        below = self._skip.get(agent)
        if below is None:
            return False
        if offset < below:
            self.skipped_events += 1
            self.metrics.kafka_state_skipped_events.inc()
            return True
        del self._skip[agent]  # a partition is read in order: no older record of this agent follows
        return False

    def _dead(self, tp: Any, rec: Any, reason: str, message: str) -> None:
        self.dead_letter.send(DeadRecord(tp.topic, tp.partition, rec.offset, rec.key, rec.value, reason, message))
        self.metrics.requests_rejected.labels(NAME, reason).inc()
        self.metrics.kafka_records.labels("dead_letter").inc()
        log.warning("Kafka record %s/%s/%s sent to the dead letter: %s", tp.topic, tp.partition, rec.offset, message[:300])

    def _offer(self) -> None:
        """Hand pending records to the pipeline in order, as many as it takes; remember their tickets."""
        assert self._loop is not None
        batch = [(r.calls, r.listings) for r in self._pending]
        fut = asyncio.run_coroutine_threadsafe(self._accept(batch), self._loop)
        tickets, too_big = fut.result(timeout=self.settle_timeout_s)
        spans = rejected = 0
        for ticket in tickets:
            r = self._pending.popleft()
            self._ticket = ticket
            self._uncommitted.append((ticket, r.tp, r.offset + 1))
            spans += r.spans
            rejected += r.rejected
        if too_big:  # could never fit the queue, even empty: dead-letter it rather than stall
            r = self._pending.popleft()
            rec = _Shim(r.offset, None, None)
            self._dead(r.tp, rec, "too_many_spans", f"record holds {r.events} events, more than pipeline.queue_max_spans")
            self._uncommitted.append((self._ticket, r.tp, r.offset + 1))
        if tickets:
            self.metrics.spans_received.labels(NAME).inc(spans)
            self.metrics.kafka_records.labels("accepted").inc(len(tickets))
            if rejected:
                self.metrics.spans_rejected.labels(NAME, "invalid_span").inc(rejected)

    async def _accept(self, batch: list[tuple[list[ToolCall], list[ToolListing]]]) -> tuple[list[int], bool]:
        """On the event loop: submit in order until the pipeline refuses; return the tickets taken."""
        tickets: list[int] = []
        for calls, listings in batch:
            depth = self.pipeline.depth
            if self.inflight_max_spans and depth and depth + len(calls) + len(listings) > self.inflight_max_spans:
                return tickets, False
            if not self.pipeline.submit(calls, listings):
                never_fits = self.pipeline.depth == 0
                return tickets, never_fits
            tickets.append(self.pipeline.last_ticket)
        return tickets, False

    def _set_paused(self, consumer: Any, paused: bool) -> None:
        if paused and not self._paused:
            consumer.pause(*consumer.assignment())
            self.pauses += 1
            log.info("Kafka: pipeline queue full; partitions paused")
        elif not paused and self._paused:
            consumer.resume(*consumer.paused())
        self._paused = paused
        self.metrics.kafka_paused.set(1 if paused else 0)

    def _maybe_commit(self, consumer: Any, *, force: bool = False, stopping: bool = False) -> None:
        now = self.clock()
        ready = bool(self._snapshot_for) and self.pipeline.saved_seq >= self._snapshot_for
        if ready:  # the snapshot asked for is saved: commit what it covers now, not at the next interval
            self._snapshot_for = 0
        interval = max(self.cfg.commit_interval_ms / 1000, SNAPSHOT_COST_FACTOR * self._snapshot_cost)
        due = force or now - self._last_request >= interval
        if not (due or ready):
            return
        saved = self.pipeline.saved_seq
        states: AgentStates = {}
        if self._capture is not None:  # commit only what the captured (and written) agent states cover
            saved, states = self._capture.take()
        done: list[tuple[int, Any, int]] = []
        while self._uncommitted and self._uncommitted[0][0] <= saved:
            done.append(self._uncommitted.popleft())
        offsets = {tp: nxt for _, tp, nxt in done}
        if states and not self._write_states(states, offsets):
            self._uncommitted.extendleft(reversed(done))  # neither state nor offsets move: retried next time
        elif done and not self._commit(consumer, offsets, len(done), stopping=stopping):
            self._uncommitted.extendleft(reversed(done))  # retried at the next commit
        if due and self._uncommitted and self._uncommitted[0][0] <= self.pipeline.done_seq and self._loop is not None:
            # Processed but not yet in a state snapshot: ask for one; commit as soon as it is saved.
            # Only when due: asking again right after each save would snapshot back to back.
            if not self._snapshot_for:
                self._last_request = now
            self._snapshot_for = max(1, self.pipeline.done_seq)
            self._loop.call_soon_threadsafe(self.pipeline.request_snapshot)
        elif due:
            self._last_request = now

    def _on_saved(self, _saved_seq: int) -> None:
        self._snapshot_cost = max(0.0, self.pipeline.last_save_s)

    def _commit(self, consumer: Any, offsets: dict[Any, int], records: int, *, stopping: bool = False) -> bool:
        """Commit ``offsets`` (dead letters flushed first); False when it failed. ``stopping``: the
        last commit, bounded by ``STOP_TIMEOUT_MS``."""
        from kafka.structs import OffsetAndMetadata

        try:
            self.dead_letter.flush(STOP_TIMEOUT_MS / 1000 if stopping else None)
            committed = {tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()}
            if stopping:
                consumer.commit(committed, timeout_ms=STOP_TIMEOUT_MS)
            else:
                consumer.commit(committed)
        except Exception as exc:  # e.g. a rebalance took the partition: the new owner re-reads it
            self.metrics.kafka_commits.labels("failed").inc()
            if stopping:
                log.warning("Kafka: offset commit failed at stop (%s); the %d records since the last commit are "
                            "redelivered after the restart", exc, records)
            else:
                log.warning("Kafka: offset commit failed (%s); retrying at the next commit", exc)
            return False
        self.committed_records += records
        self.metrics.kafka_commits.labels("ok").inc()
        return True

    def _settle(self, consumer: Any) -> None:
        """Graceful stop: let the pipeline finish what it took, snapshot, commit it all (agent states first)."""
        try:
            self._drain_and_save()
        except Exception as exc:
            log.warning("Kafka: pipeline did not drain on shutdown (%s); uncommitted records will be redelivered", exc)
            return
        self._maybe_commit(consumer, force=True, stopping=True)

    def _drain_and_save(self) -> None:
        """Let the pipeline finish what it took and snapshot (which captures the touched agents' state)."""
        assert self._loop is not None

        async def drain_and_save() -> None:
            await self.pipeline.drained(self.settle_timeout_s)
            # Not ``save_state``: OTLP traffic, an approval or a rule reload may be in the detectors
            # by now; this waits for them (the detector lock) as the pipeline's own snapshots do.
            await self.pipeline.save_state_exclusive()

        done = asyncio.run_coroutine_threadsafe(drain_and_save(), self._loop)
        try:
            done.result(self.settle_timeout_s + 5)
        except TimeoutError:
            done.cancel()  # no save at some later point, after this hand-over has gone on without it
            raise

    # --- rebalances (called inside poll, on the consumer thread) ------------------------------
    def _on_revoked(self, revoked: set[Any]) -> None:
        self._pending.extend(self._decoded())  # filtered below like the rest of the pending records
        if self.changelog is not None and revoked:
            try:
                self._drain_and_save()  # the commit below writes the touched agents' state first
            except Exception:
                log.exception("Kafka: pipeline did not drain before the rebalance; the new owner re-reads what was not committed")
        if self._consumer is not None:
            self._maybe_commit(self._consumer, force=True)
        if self.changelog is not None and revoked:
            try:
                self._drop_agents({tp.partition for tp in revoked})
            except Exception:
                log.exception("Kafka: agents of revoked partitions could not be dropped")
        self._uncommitted = deque(e for e in self._uncommitted if e[1] not in revoked)
        self._pending = deque(r for r in self._pending if r.tp not in revoked)
        self.assigned -= revoked
        self.metrics.kafka_assigned_partitions.set(len(self.assigned))
        if revoked:
            log.info("Kafka: partitions revoked: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in revoked))

    def _on_lost(self, lost: set[Any]) -> None:
        """Evicted from the group: the partitions may already be someone else's, so no drain, no write, no
        commit (the new owner restores the last committed state and re-reads the rest); forget them."""
        self._pending.extend(self._decoded())  # filtered below like the rest of the pending records
        if self.changelog is not None and lost:
            try:
                self._drop_agents({tp.partition for tp in lost}, wait=False)
            except Exception:
                log.exception("Kafka: agents of lost partitions could not be dropped")
        self._uncommitted = deque(e for e in self._uncommitted if e[1] not in lost)
        self._pending = deque(r for r in self._pending if r.tp not in lost)
        self.assigned -= lost
        self.metrics.kafka_assigned_partitions.set(len(self.assigned))
        if lost:
            log.warning("Kafka: partitions lost (evicted from the group): %s", sorted(f"{tp.topic}/{tp.partition}" for tp in lost))

    def _on_assigned(self, assigned: set[Any]) -> None:
        if self.changelog is not None and assigned:
            try:
                self._restore_state({tp.partition for tp in assigned})
            except Exception:
                log.exception("Kafka: agent state of assigned partitions could not be restored from the changelog")
        self.assigned |= assigned
        self.metrics.kafka_assigned_partitions.set(len(self.assigned))
        self._paused = False  # a rebalance resets pause state; _step pauses again if needed
        if assigned:
            log.info("Kafka: partitions assigned: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))

    # --- scale-out: per-partition agent state (issue 9) ------------------------------------------
    def _write_states(self, states: AgentStates, offsets: dict[Any, int]) -> bool:
        """Write captured agent states to the changelog, each with the input offset it covers; False on failure.

        Runs before the offsets are committed: a crash in between leaves the changelog ahead of the
        committed offsets, and the recorded offset tells the next owner which redelivered events to skip.
        """
        assert self.changelog is not None and self._capture is not None
        position = dict(self._position)
        position.update({tp.partition: off for tp, off in offsets.items()})
        by_partition: dict[int, AgentStates] = {}
        for agent, st in states.items():
            p = self._agent_partition.get(agent)
            if p is not None:  # None: not from our partitions (e.g. OTLP over HTTP), not ours to hand over
                by_partition.setdefault(p, {})[agent] = st
        try:
            for p, mine in by_partition.items():
                self.changelog.write(p, mine, position.get(p))
        except Exception as exc:
            self._capture.put_back(states)
            self.metrics.kafka_commits.labels("failed").inc()
            log.warning("Kafka: agent state could not be written to the changelog (%s); offsets not committed, retrying", exc)
            return False
        self._position = position
        written = sum(len(m) for m in by_partition.values())
        self.changelog_agents_written += written
        self.metrics.kafka_state_agents.labels("written").inc(written)
        return True

    def _drop_agents(self, partitions: set[int], *, wait: bool = True) -> None:
        """Forget the agents of partitions another member now owns (their state is in the changelog).

        ``wait=False`` (partitions lost): the drop runs on the event loop once the pipeline is idle,
        without blocking this thread; what is still queued for these agents is processed first.
        """
        assert self._loop is not None and self._capture is not None
        agents = [a for a, p in self._agent_partition.items() if p in partitions]

        async def drop() -> None:
            await self.pipeline.drained(self.settle_timeout_s)
            for agent in agents:
                for d in self.pipeline.detectors:
                    d.drop_agent(agent)

        fut = asyncio.run_coroutine_threadsafe(drop(), self._loop)
        if wait:
            fut.result(self.settle_timeout_s + 5)
        self._capture.forget(agents)
        for agent in agents:
            self._agent_partition.pop(agent, None)
            self._skip.pop(agent, None)
        for p in partitions:
            self._position.pop(p, None)
        self.metrics.kafka_state_agents.labels("dropped").inc(len(agents))
        log.info("Kafka: handed over %d agent(s) of partitions %s", len(agents), sorted(partitions))

    def _restore_state(self, partitions: set[int]) -> None:
        """Read these partitions' agents from the changelog and restore them into the detectors."""
        assert self._loop is not None and self.changelog is not None
        by_partition: dict[int, dict[str, AgentRecord]] = self.changelog.read_partitions(partitions)

        async def put() -> None:
            await self.pipeline.drained(self.settle_timeout_s)
            for records in by_partition.values():
                for agent, record in records.items():
                    for d in self.pipeline.detectors:
                        if d.name in record.detectors:
                            d.restore_agent(agent, record.detectors[d.name])

        asyncio.run_coroutine_threadsafe(put(), self._loop).result(self.settle_timeout_s + 5)
        for p, records in by_partition.items():
            for agent, record in records.items():
                self._agent_partition[agent] = p
                if record.offset is not None:
                    self._skip[agent] = record.offset
        n = sum(len(s) for s in by_partition.values())
        self.metrics.kafka_state_agents.labels("restored").inc(n)
        log.info("Kafka: restored the state of %d agent(s) of partitions %s from the changelog", n, sorted(partitions))


@dataclass(slots=True)
class _Shim:
    offset: int
    key: bytes | None
    value: bytes | None


def make_consumer_factory(cfg: KafkaConfig, max_record_bytes: int) -> Callable[[], Any]:
    """Build ``KafkaConsumer``s for ``cfg`` (manual commits: the receiver commits what is done)."""

    def factory() -> Any:
        from kafka import KafkaConsumer

        return KafkaConsumer(
            bootstrap_servers=[s.strip() for s in cfg.bootstrap_servers.split(",") if s.strip()],
            group_id=cfg.group_id,
            client_id=cfg.client_id,
            enable_auto_commit=False,
            auto_offset_reset=cfg.auto_offset_reset,
            max_poll_records=cfg.max_poll_records,
            max_poll_interval_ms=cfg.max_poll_interval_ms,
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=max(100, cfg.session_timeout_ms // 3),
            max_partition_fetch_bytes=max(1024 * 1024, max_record_bytes + 1024),
        )

    return factory


def make_dead_letter(cfg: KafkaConfig, data_dir: Path) -> DeadLetter:
    """A dead-letter topic when ``kafka.dead_letter_topic`` is set, else a file in the data directory."""
    if not cfg.dead_letter_topic:
        return FileDeadLetter(Path(data_dir) / DEAD_LETTER_FILE)

    def producer() -> Any:
        from kafka import KafkaProducer

        return KafkaProducer(
            bootstrap_servers=[s.strip() for s in cfg.bootstrap_servers.split(",") if s.strip()],
            client_id=f"{cfg.client_id}-dead-letter",
            acks="all",
        )

    return KafkaDeadLetter(producer, cfg.dead_letter_topic)


def make_changelog(cfg: KafkaConfig) -> StateChangelog | None:
    """The agent-state changelog when ``kafka.state_changelog_topic`` is set (scale-out), else None."""
    if not cfg.state_changelog_topic:
        return None
    servers = [s.strip() for s in cfg.bootstrap_servers.split(",") if s.strip()]

    def producer() -> Any:
        from kafka import KafkaProducer

        return KafkaProducer(bootstrap_servers=servers, client_id=f"{cfg.client_id}-state", acks="all")

    def consumer() -> Any:
        from kafka import KafkaConsumer

        return KafkaConsumer(bootstrap_servers=servers, client_id=f"{cfg.client_id}-state", group_id=None,
                             enable_auto_commit=False)

    return StateChangelog(cfg.state_changelog_topic, producer, consumer)


def build_kafka_receiver(
    cfg: KafkaConfig, data_dir: Path, normalizer: Normalizer, pipeline: Pipeline, metrics: Metrics, *,
    max_record_bytes: int, decoders: DecodeWorkers | None = None,
) -> KafkaReceiver:
    """What the daemon calls when ``kafka.enabled``: the receiver with its consumer and dead letter."""
    return KafkaReceiver(
        cfg,
        normalizer,
        pipeline,
        metrics,
        make_dead_letter(cfg, data_dir),
        make_consumer_factory(cfg, max_record_bytes),
        max_record_bytes=max_record_bytes,
        changelog=make_changelog(cfg),
        decoders=decoders,
    )
