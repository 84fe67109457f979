"""Alert sinks. One small interface; delivery state of durable sinks lives in the store."""

from __future__ import annotations

from abc import ABC, abstractmethod

from ..store import StoredAlert


class Sink(ABC):
    """``emit`` must not block the pipeline: durable sinks read their work from the store's outbox."""

    name: str = ""
    durable: bool = False
    """True when the sink delivers from the outbox (and so gets an outbox row per alert)."""

    async def start(self) -> None:
        return None

    async def shutdown(self) -> None:
        """Safe without start and safe twice."""
        return None

    def wants(self, alert: StoredAlert) -> bool:
        """The sink's route: a durable sink gets an outbox row only for alerts it wants."""
        return True

    @abstractmethod
    def emit(self, alerts: list[StoredAlert]) -> None: ...
