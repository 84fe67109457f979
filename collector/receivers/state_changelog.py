"""Per-agent detector state that moves with its Kafka partition (scale-out groundwork, issue 9).

The state of each agent lives in a compacted changelog topic keyed by agent id and co-partitioned with
the input topic (as Kafka Streams does): an agent seen on input partition ``p`` has its state written
to changelog partition ``p``. On revocation a daemon flushes the state of the agents it saw on the
revoked partitions and forgets them; on assignment it reads the changelog partitions of the assigned
ones and restores those agents. Values are JSON: ``{"agent": id, "detectors": {name: state}}``;
a ``None`` value is a tombstone. Detectors provide ``snapshot_agent`` / ``restore_agent`` / ``drop_agent``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterable

log = logging.getLogger("toolwatch.receiver.kafka.state")

AgentStates = dict[str, dict[str, Any]]
"""agent id -> detector name -> that detector's state for the agent."""


def encode_state(agent: str, states: dict[str, Any]) -> bytes:
    return json.dumps({"agent": agent, "detectors": states}, separators=(",", ":")).encode()


def decode_state(value: bytes) -> tuple[str, dict[str, Any]]:
    """-> (agent, detector states); ``ValueError`` when the record is not one of ours."""
    data = json.loads(value)
    if not isinstance(data, dict) or not isinstance(data.get("agent"), str) or not isinstance(data.get("detectors"), dict):
        raise ValueError("changelog record is not {agent: str, detectors: {...}}")
    return data["agent"], data["detectors"]


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

    def write(self, partition: int, states: AgentStates) -> None:
        """Write every agent's state to ``partition`` and wait until the broker has them all."""
        if not states:
            return
        if self._producer is None:
            self._producer = self.producer_factory()
        futures = [
            self._producer.send(self.topic, key=agent.encode(), value=encode_state(agent, st), partition=partition)
            for agent, st in states.items()
        ]
        self._producer.flush(self.flush_timeout_s)
        for fut in futures:
            fut.get(self.flush_timeout_s)

    def read(self, partitions: Iterable[int]) -> AgentStates:
        """The latest state of every agent in the changelog ``partitions`` (last record per key wins)."""
        from kafka import TopicPartition

        tps = [TopicPartition(self.topic, p) for p in partitions]
        if not tps:
            return {}
        consumer = self.consumer_factory()
        out: AgentStates = {}
        try:
            known = consumer.partitions_for_topic(self.topic) or set()
            tps = [tp for tp in tps if tp.partition in known]
            if not tps:
                return {}
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            # Read until the partitions stay quiet: broker-agnostic (no reliance on ListOffsets).
            while True:
                polled = consumer.poll(timeout_ms=self.read_idle_ms, max_records=5000)
                if not polled:
                    break
                for records in polled.values():
                    for rec in records:
                        key = rec.key.decode("utf-8", "replace") if rec.key else ""
                        if rec.value is None:
                            out.pop(key, None)
                            continue
                        try:
                            agent, states = decode_state(rec.value)
                        except ValueError as exc:
                            log.warning("changelog %s/%s/%s skipped: %s", rec.topic, rec.partition, rec.offset, exc)
                            continue
                        out[agent] = states
        finally:
            consumer.close()
        return out

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(self.flush_timeout_s)
