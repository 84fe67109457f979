"""Refits per-agent models off the hot path: one worker thread at a time, never inside a batch."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from toolwatch.detectors.events import Batch, Finding

log = logging.getLogger("toolwatch.retrain")


class Retrainable(Protocol):
    name: str

    def needs_retrain(self) -> list[str]: ...

    def retrain(self, keys: Any = None) -> list[str]: ...


class Retrainer:
    """A pipeline batch listener: when a detector asks for a refit, run it in a thread."""

    def __init__(self, detectors: list[Any]) -> None:
        self.detectors: list[Retrainable] = [d for d in detectors if hasattr(d, "needs_retrain") and hasattr(d, "retrain")]
        self._task: asyncio.Task[None] | None = None
        self.fitted = 0

    def __call__(self, batch: Batch, findings: list[Finding]) -> None:
        if self._task is not None and not self._task.done():
            return
        work = [(d, keys) for d in self.detectors if (keys := d.needs_retrain())]
        if work:
            self._task = asyncio.get_running_loop().create_task(self._run(work), name="retrain")

    async def _run(self, work: list[tuple[Retrainable, list[str]]]) -> None:
        for det, keys in work:
            try:
                done = await asyncio.to_thread(det.retrain, keys)
                self.fitted += len(done)
                log.debug("%s: refitted %d model(s)", det.name, len(done))
            except Exception:
                log.exception("%s: retraining failed; the previous models stay in use", det.name)

    async def shutdown(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await task
