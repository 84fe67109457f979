"""Where Kafka records that cannot be decoded go, with the reason: a topic, or a JSON-lines file.

A dead letter is written (and flushed) before the record's offset is committed, so a poison record
is never lost and never blocks its partition. The file keeps the value base64-encoded and is
created 0600: an undecodable payload may still hold whatever the producer put in it.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

REASON_HEADER = "toolwatch.dead_letter.reason"
MESSAGE_HEADER = "toolwatch.dead_letter.message"
SOURCE_HEADER = "toolwatch.dead_letter.source"
"""``topic/partition/offset`` of the original record."""


@dataclass(frozen=True, slots=True)
class DeadRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    """Short label (bad_protobuf, bad_json, empty, too_large, ...)."""
    message: str
    """What exactly is wrong, for a human."""

    @property
    def source(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


class DeadLetter(Protocol):
    def send(self, record: DeadRecord) -> None: ...

    def flush(self, timeout_s: float | None = None) -> None:
        """Make every sent dead letter durable; called before offsets are committed. ``timeout_s``
        bounds a wait on a remote sink (the stop's last commit); past it, raise."""

    def close(self, timeout_s: float | None = None) -> None: ...


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


class FileDeadLetter:
    """Appends one JSON object per dead record to ``path`` (fsync on flush)."""

    def __init__(self, path: Path, *, clock: Any = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._fh: Any = None

    def _file(self) -> Any:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._fh = os.fdopen(fd, "a", encoding="utf-8")
        return self._fh

    def send(self, record: DeadRecord) -> None:
        line = {
            "time": self.clock(),
            "source": record.source,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "reason": record.reason,
            "message": record.message,
            "key_b64": _b64(record.key),
            "value_b64": _b64(record.value),
        }
        self._file().write(json.dumps(line, separators=(",", ":")) + "\n")

    def flush(self, timeout_s: float | None = None) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self, timeout_s: float | None = None) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.flush()
            fh.close()


class KafkaDeadLetter:
    """Re-publishes the original key and value to ``topic`` with the reason in record headers.

    ``producer_factory`` makes a ``kafka.KafkaProducer`` (or anything with ``send``/``flush``/``close``);
    it is called on the first dead letter, on the consumer thread, never at start-up.
    """

    def __init__(self, producer_factory: Callable[[], Any], topic: str, *, flush_timeout_s: float = 30.0) -> None:
        self.producer_factory = producer_factory
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        self._producer: Any = None
        self._futures: list[Any] = []

    def send(self, record: DeadRecord) -> None:
        if self._producer is None:
            self._producer = self.producer_factory()
        headers = [
            (REASON_HEADER, record.reason.encode()),
            (MESSAGE_HEADER, record.message[:1000].encode("utf-8", "replace")),
            (SOURCE_HEADER, record.source.encode()),
        ]
        self._futures.append(self._producer.send(self.topic, key=record.key, value=record.value or b"", headers=headers))

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait up to ``flush_timeout_s`` (or ``timeout_s``, if less) in all; raises past it, or if the
        broker refused a record: then nothing is committed, and the records are redelivered."""
        futures, self._futures = self._futures, []
        if not futures:
            return
        budget = self._budget(timeout_s)
        end = time.monotonic() + budget
        self._producer.flush(budget)
        for fut in futures:
            fut.get(max(0.0, end - time.monotonic()))

    def close(self, timeout_s: float | None = None) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(self._budget(timeout_s))

    def _budget(self, timeout_s: float | None) -> float:
        """``flush_timeout_s``, or ``timeout_s`` if given and less (the receiver's stop bound)."""
        return self.flush_timeout_s if timeout_s is None else min(timeout_s, self.flush_timeout_s)
