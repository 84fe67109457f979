"""Refits per-agent models off the hot path: one worker thread at a time, never inside a batch."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Protocol

from toolwatch.detectors.events import Batch, Finding

from .refit_worker import RefitWorkerDied

log = logging.getLogger("toolwatch.retrain")


class Retrainable(Protocol):
    name: str

    def needs_retrain(self) -> list[str]: ...

    def retrain(self, keys: Any = None) -> list[str]: ...


def _by_urgency(det: Any, keys: list[str]) -> list[str]:
    """``keys`` most urgent first, by the detector's ``retrain_order`` when it has one."""
    order = getattr(det, "retrain_order", None)
    return list(order(keys)) if order is not None else keys


class Retrainer:
    """A pipeline batch listener: when a detector asks for a refit, run it in a thread.

    Refits share the interpreter with the detectors, and detectors ask for them every N new rows, so
    their CPU would grow with traffic until it took the whole core. ``max_share`` bounds them: after a
    run of t seconds the next starts no sooner than t * (1 / max_share - 1) later. Models then refresh
    less often under heavy load (the rows keep rolling into the window), never the other way round.
    With the refit worker process (the default) a run's wall time is the worker's fitting time (the
    thread here only waits on its pipe), so the bound keeps the worker to ``max_share`` of the other
    core; the detectors' interpreter is no longer the resource it protects.

    ``max_models`` (the daemon's ``pipeline.retrain_max_models``) caps the keys one run fits (an
    agent's model each, or all group models as one), the most urgent first (the detector's
    ``retrain_order``: first models, then the most overdue). Agents that start together come due
    together: a run that fitted them all (tens of seconds) was followed by a pause three times as
    long, then the next wave, and the daemon took every new model in a few batches. Small runs
    spread the same share evenly over time; each model is fitted from its agent's window as
    before, only the time of each fit changes. None fits every key asked for in one run (as the
    replay harness does).

    ``shutdown`` starts no more runs and gives the one in flight ``stop_grace_s``; then ``abort``
    (the daemon passes its refit worker's) stops the fit in progress, which is dropped: the
    detector keeps its previous model and asks for the refit again after the restart. Waiting for
    the fit instead held a daemon's stop for up to the refit worker's ``fit_timeout_s`` (600 s)
    when the worker was stuck, far beyond a service manager's stop timeout.
    """

    def __init__(self, detectors: list[Any], *, max_share: float = 0.25, max_models: int | None = None,
                 clock: Callable[[], float] = time.monotonic, stop_grace_s: float = 5.0,
                 abort: Callable[[], None] | None = None) -> None:
        if max_models is not None and max_models < 1:
            raise ValueError(f"Retrainer: max_models must be >= 1 or None (got {max_models})")
        self.detectors: list[Retrainable] = [d for d in detectors if hasattr(d, "needs_retrain") and hasattr(d, "retrain")]
        self._task: asyncio.Task[None] | None = None
        self.fitted = 0
        self.max_share = max_share
        self.max_models = max_models
        self.clock = clock
        self._not_before = 0.0
        self.stop_grace_s = stop_grace_s
        self.abort = abort
        """Makes a fit in progress return at once (it raises); None: ``shutdown`` waits for it."""
        self._closed = False

    def __call__(self, batch: Batch, findings: list[Finding]) -> None:
        if self._closed:
            return
        if self._task is not None and not self._task.done():
            return
        if self.clock() < self._not_before:
            return
        work = [(d, keys if self.max_models is None else _by_urgency(d, keys)[: self.max_models])
                for d in self.detectors if (keys := d.needs_retrain())]
        if work:
            self._task = asyncio.get_running_loop().create_task(self._run(work), name="retrain")

    async def _run(self, work: list[tuple[Retrainable, list[str]]]) -> None:
        started = self.clock()
        for det, keys in work:
            if self._closed:
                break
            try:
                done = await asyncio.to_thread(det.retrain, keys)
                self.fitted += len(done)
                log.debug("%s: refitted %d model(s)", det.name, len(done))
            except RefitWorkerDied as exc:
                log.log(logging.WARNING if self._closed else logging.ERROR, "%s: %s", det.name, exc)
            except Exception:
                log.exception("%s: retraining failed; the previous models stay in use", det.name)
        took = self.clock() - started
        self._not_before = self.clock() + took * (1.0 / self.max_share - 1.0)

    async def wait(self) -> None:
        """Wait for the run in flight, however long it takes; later batches may start new runs
        (the replay harness settles on this between chunks)."""
        task = self._task
        if task is not None:
            await task

    async def shutdown(self) -> None:
        """Start no more runs; the run in flight gets ``stop_grace_s``, then ``abort`` ends its fit."""
        self._closed = True
        task, self._task = self._task, None
        if task is None:
            return
        await asyncio.wait({task}, timeout=self.stop_grace_s)
        if not task.done() and self.abort is not None:
            log.warning("a model refit is still running %g s into the shutdown: stopping it (it is dropped; "
                        "the previous model stays and the refit is asked for again after the restart)",
                        self.stop_grace_s)
            await asyncio.to_thread(self.abort)
        await task
