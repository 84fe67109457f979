"""Hot reload of operator rule files: a broken file never stops the daemon or drops the good rules."""

from __future__ import annotations

import asyncio
import logging
import os

from toolwatch.detectors.rules import RuleEngine, RuleError

from .detector_registry import rule_files
from .metrics import Metrics
from .pipeline import Pipeline
from .uncancellable import stop_task

log = logging.getLogger("toolwatch.rules")


class RuleFileWatcher:
    """Polls the configured rule files' mtimes; on a change, reloads between two batches."""

    def __init__(self, engine: RuleEngine, pipeline: Pipeline, metrics: Metrics, *, interval_s: float = 2.0) -> None:
        self.engine = engine
        self.pipeline = pipeline
        self.metrics = metrics
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._stamps = self._mtimes()
        self.last_error: str = ""
        self._update_gauge()

    def _mtimes(self) -> tuple[float | None, ...]:
        out = []
        for path in self.engine.config.files:
            try:
                out.append(os.stat(path).st_mtime_ns)
            except OSError:
                out.append(None)
        return tuple(out)

    def _update_gauge(self) -> None:
        rs = self.engine.ruleset
        self.metrics.rules_loaded.set(len(rs.rules) + len(rs.correlations))

    async def check(self) -> bool:
        """Reload if any file changed; returns True when a reload was attempted."""
        stamps = self._mtimes()
        if stamps == self._stamps:
            return False
        self._stamps = stamps
        try:
            files = rule_files(self.engine.config)
            error = await self.pipeline.exclusive(lambda: self.engine.reload(files))
        except RuleError as exc:
            error = exc
        if error is not None:
            self.last_error = str(error)
            self.metrics.rules_reloads.labels("error").inc()
            log.error("rule files not reloaded, keeping the last good rules: %s", error)
        else:
            self.last_error = ""
            self.metrics.rules_reloads.labels("ok").inc()
            self._update_gauge()
            log.info("rule files reloaded: %d rules active", len(self.engine.ruleset.rules))
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception:
                log.exception("rule reload check failed; will try again")

    async def start(self) -> None:
        if self._task is None and self.engine.config.files:
            self._task = asyncio.create_task(self._run(), name="rules-watch")

    async def shutdown(self) -> None:
        """Stop polling. The poll loop ends in a CancelledError of its own, which is swallowed; a
        cancel of the task running this shutdown is passed on (a caller's timeout must see it)."""
        task, self._task = self._task, None
        await stop_task(task)
