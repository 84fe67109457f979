"""Per-agent detector state that moves with its Kafka partition (scale-out groundwork, issue 9).

The state of each agent lives in a compacted changelog topic keyed by agent id and co-partitioned with
the input topic (as Kafka Streams does): an agent seen on input partition ``p`` has its state written
to changelog partition ``p``. On revocation a daemon flushes the state of the agents it saw on the
revoked partitions and forgets them; on assignment it reads the changelog partitions of the assigned
ones and restores those agents. Values are JSON: ``{"agent": id, "detectors": {name: state}, "offset": n}``;
a ``None`` value is a tombstone. Detectors provide ``snapshot_agent`` / ``restore_agent`` / ``drop_agent``.

``offset`` is the input partition's next offset that the state covers: every record of the agent's
partition below it is in the state. It is written *before* the offsets are committed, so after a
crash between the two the new owner knows which redelivered records the state already holds and
skips that agent's events in them (no call is counted twice). Records without it (older writers)
restore as before.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

log = logging.getLogger("toolwatch.receiver.kafka.state")

AgentStates = dict[str, dict[str, Any]]
"""agent id -> detector name -> that detector's state for the agent."""


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """One agent's latest changelog record: its detector states and the input offset they cover."""

    detectors: dict[str, Any]
    offset: int | None = None


def encode_state(agent: str, states: dict[str, Any], offset: int | None = None) -> bytes:
    data: dict[str, Any] = {"agent": agent, "detectors": states}
    if offset is not None:
        data["offset"] = offset
    return json.dumps(data, separators=(",", ":")).encode()


def decode_state(value: bytes) -> tuple[str, AgentRecord]:
    """-> (agent, its record); ``ValueError`` when the record is not one of ours."""
    try:
        data = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"changelog record is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("agent"), str) or not isinstance(data.get("detectors"), dict):
        raise ValueError("changelog record is not {agent: str, detectors: {...}}")
    offset = data.get("offset")
    if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int) or offset < 0):
        raise ValueError(f"changelog record offset must be a non-negative integer, got {offset!r}")
    return data["agent"], AgentRecord(data["detectors"], offset)


class StateChangelog:
    """Reads and writes one compacted changelog topic; clients come from factories (built lazily)."""

    def __init__(
        self,
        topic: str,
        producer_factory: Callable[[], Any],
        consumer_factory: Callable[[], Any],
        *,
        read_idle_ms: int = 500,
        flush_timeout_s: float = 30.0,
    ) -> None:
        self.topic = topic
        self.producer_factory = producer_factory
        self.consumer_factory = consumer_factory
        self.read_idle_ms = read_idle_ms
        self.flush_timeout_s = flush_timeout_s
        self._producer: Any = None

    def write(self, partition: int, states: AgentStates, offset: int | None = None) -> None:
        """Write every agent's state (covering input up to ``offset``) to ``partition``; wait for the broker."""
        if not states:
            return
        if self._producer is None:
            self._producer = self.producer_factory()
        futures = [
            self._producer.send(self.topic, key=agent.encode(), value=encode_state(agent, st, offset), partition=partition)
            for agent, st in states.items()
        ]
        self._producer.flush(self.flush_timeout_s)
        for fut in futures:
            fut.get(self.flush_timeout_s)

    def read(self, partitions: Iterable[int]) -> dict[str, AgentRecord]:
        """The latest record of every agent in the changelog ``partitions`` (last record per key wins)."""
        out: dict[str, AgentRecord] = {}
        for records in self.read_partitions(partitions).values():
            out.update(records)
        return out

    def read_partitions(self, partitions: Iterable[int]) -> dict[int, dict[str, AgentRecord]]:
        """Per changelog partition, the latest record of each of its agents; one consumer reads them all."""
        from kafka import TopicPartition

        wanted = sorted(set(partitions))
        out: dict[int, dict[str, AgentRecord]] = {p: {} for p in wanted}
        if not wanted:
            return out
        consumer = self.consumer_factory()
        try:
            known = consumer.partitions_for_topic(self.topic) or set()
            tps = [TopicPartition(self.topic, p) for p in wanted if p in known]
            if not tps:
                return out
            try:  # read up to the end offsets when the broker tells them (fast, exact) ...
                ends: dict[Any, int] | None = {tp: off for tp, off in consumer.end_offsets(tps).items() if off}
                tps = [tp for tp in tps if tp in ends]
            except Exception as exc:  # ... else until the partitions stay quiet for read_idle_ms
                log.info("changelog %s: end offsets unavailable (%s); reading until quiet", self.topic, exc)
                ends = None
            if not tps:
                return out
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            while ends is None or any(consumer.position(tp) < end for tp, end in ends.items()):
                polled = consumer.poll(timeout_ms=self.read_idle_ms, max_records=5000)
                if not polled:
                    break
                for records in polled.values():
                    for rec in records:
                        mine = out.setdefault(rec.partition, {})
                        key = rec.key.decode("utf-8", "replace") if rec.key else ""
                        if rec.value is None:
                            mine.pop(key, None)
                            continue
                        try:
                            agent, record = decode_state(rec.value)
                        except ValueError as exc:
                            log.warning("changelog %s/%s/%s skipped: %s", rec.topic, rec.partition, rec.offset, exc)
                            continue
                        mine[agent] = record
        finally:
            consumer.close()
        return out

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(self.flush_timeout_s)
