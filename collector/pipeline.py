"""Bounded queue -> micro-batches -> detectors -> alert router.

Receivers call ``submit``; when the queue is full it refuses (the receiver answers 429 /
RESOURCE_EXHAUSTED so exporters back off) rather than queueing without bound. Detectors run
one batch at a time in a worker thread so the event loop keeps serving requests.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from operator import attrgetter
from typing import Callable, Sequence, TypeVar

from toolwatch.detectors.base import Detector
from toolwatch.detectors.events import Batch, Finding, ToolCall, ToolListing

from .alerts import AlertRouter
from .event_time import EventTimeRule, Verdict, judge
from .gc_pause import gc_paused
from .metrics import Metrics
from .snapshot_process import SnapshotChild, fork_snapshot
from .store import Store
from .uncancellable import finish_despite_cancel

log = logging.getLogger("toolwatch.pipeline")
_TIME = attrgetter("time_ns")
_CALL_LABELS = attrgetter("agent_id", "server", "tool")
"""The ``toolwatch_tool_calls_total`` labels of a call, read at C speed."""
T = TypeVar("T")
LOCK_POLL_S = 0.005
"""How often ``save_state_exclusive`` looks again while a batch or a holder of the detector lock is busy."""


def full_for(depth: int, spans: int, queue_max: int) -> bool:
    """True when a request of ``spans`` spans may not fit in a queue holding ``depth`` of ``queue_max``.

    Spans bound the events a request adds, so a request refused here might have fitted
    (some of its spans not being tool events) only when the queue is within ``spans`` of
    full, and it is retried. A request larger than the whole queue is left to ``submit``,
    which counts its events, so it is never refused forever. (OTLP worker processes apply the
    same rule to the depth the daemon shares with them.)
    """
    return spans <= queue_max and depth + spans > queue_max


@dataclass(slots=True)
class _Item:
    calls: list[ToolCall]
    listings: list[ToolListing]
    arrived: float
    seq: int = 0


@dataclass(slots=True)
class Admission:
    """``accepted`` False: the queue was full and nothing was queued (answer "retry later")."""

    accepted: bool
    verdict: Verdict


class Pipeline:
    def __init__(
        self,
        detectors: Sequence[Detector],
        router: AlertRouter,
        store: Store,
        metrics: Metrics,
        *,
        batch_max_size: int = 4096,
        batch_max_delay_s: float = 0.2,
        queue_max: int = 200_000,
        queue_max_wait_s: float = 0.0,
        snapshot_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        event_time: EventTimeRule | None = None,
        wall_clock: Callable[[], float] = time.time,
        snapshot_process: bool = False,
        snapshot_timeout_s: float = 120.0,
        child_cpus: Callable[[], set[int] | None] = lambda: None,
    ) -> None:
        self.detectors = list(detectors)
        self.router = router
        self.store = store
        self.metrics = metrics
        self.batch_max_size = batch_max_size
        self.batch_max_delay_s = batch_max_delay_s
        self.queue_max = queue_max
        self.queue_max_wait_s = queue_max_wait_s
        """While the oldest queued events have waited longer than this past ``batch_max_delay_s``
        (which a partial batch waits by design), the queue counts as full (0: only ``queue_max``
        bounds it). Under sustained overload a queue of seconds adds only lag, and costs throughput:
        calls that wait that long are cold in the CPU caches when the detectors read them, and the
        garbage collector has moved them through its generations."""
        self.snapshot_interval_s = snapshot_interval_s
        self.snapshot_process = snapshot_process and store.state_path is not None
        """Snapshots written by a forked child while batches go on (collector/snapshot_process.py);
        False after a child failed: the daemon's own process saves from then on."""
        self.snapshot_timeout_s = snapshot_timeout_s
        self.child_cpus = child_cpus
        """The CPU mask a snapshot process runs on (the daemon's mask from before its pin), or None."""
        self._child: asyncio.Task[bool] | None = None
        """The snapshot process in flight, awaited; one at a time."""
        self.last_save_s = 0.0
        """What the last state save cost: in the daemon, how long ``save_state`` took (no batch
        meanwhile); in a child, the CPU seconds it used on the other cores. The Kafka receiver spaces
        its snapshots by it."""
        self.clock = clock
        self._queue: deque[_Item] = deque()
        self._depth = 0
        self._shared_behind = False
        """``behind()`` as the depth listeners were last told."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        """Set by ``shutdown``: the run loop returns after the batch in hand, never inside it."""
        self._watermark_ns = 0
        self.event_time = event_time or EventTimeRule()
        self.wall_clock = wall_clock
        self._admit_watermark_ns = 0
        self._last_snapshot = clock()
        self.processed = 0
        self.listeners: list[Callable[[list[Finding]], None]] = []
        self.batch_listeners: list[Callable[[Batch, list[Finding]], None]] = []
        """Called after every batch, findings or not (per-agent metrics read detector state here)."""
        self.state_listeners: list[Callable[[int], None]] = []
        """Called with ``saved_seq`` after each successful state save, on the loop: between batches when
        the daemon saved (the scale-out changelog capture needs that, so with it the daemon always
        saves), when the child has written it with ``snapshot_process`` (a batch may be in the detectors)."""
        self.depth_listeners: list[Callable[[int, bool], None]] = []
        """Called with the queue's depth and ``behind()`` whenever the depth changes (OTLP worker
        processes refuse early by them)."""
        self.running_listeners: list[Callable[[bool], None]] = []
        """Called with ``running`` when ``start`` or ``shutdown`` changes it (OTLP worker processes
        refuse early only while the pipeline runs, as ``Ingest`` does)."""
        self._idle = asyncio.Event()
        self._idle.set()
        self.detector_lock = threading.Lock()
        """Held while detectors observe a batch; hold it to call into a detector from elsewhere (approvals)."""
        self._observing = False
        """A batch is with the detectors or not yet accounted (``_process``): no snapshot in between."""

        # At-least-once sources (Kafka) need to know when what they handed over is done:
        # every accepted submit gets a ticket (a sequence number, see ``last_ticket``); items are
        # processed in order, so ``done_seq`` covers every ticket up to it. ``saved_seq`` is
        # ``done_seq`` as of the last state snapshot: input up to it may be forgotten by its source.
        self._seq = 0
        self.done_seq = 0
        self.saved_seq = 0
        self._snapshot_wanted = False
        self._progress = asyncio.Event()
        self._failed_seq = 0
        """The ticket of the first batch whose accounting (alerts, listeners) failed; 0: none did."""
        self._reported: asyncio.Task[None] | None = None
        """The run loop whose death ``_ended`` logged (``_finish`` logs any other)."""

    async def exclusive(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` while no batch is being observed: for approvals and rule reloads, which
        change detector state that the worker thread would otherwise be reading."""

        def locked() -> T:
            with self.detector_lock:
                return fn()

        return await asyncio.to_thread(locked)

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def restore_state(self) -> None:
        for det in self.detectors:
            state = self.store.load_state(det.name)
            if state is not None:
                try:
                    det.restore(state)
                except Exception:
                    log.exception("detector %s: stored state could not be restored; starting fresh", det.name)

    def save_state(self) -> None:
        saved = True
        started = self.clock()
        with gc_paused():  # see gc_pause: a snapshot's own lists triggered full collections
            for det in self.detectors:
                try:
                    self.store.save_state(det.name, det.snapshot())
                except Exception:
                    saved = False
                    log.exception("detector %s: state could not be saved", det.name)
        self._last_snapshot = self.clock()
        self.last_save_s = self._last_snapshot - started
        self._snapshot_wanted = False
        self.metrics.state_snapshots.labels("daemon", "ok" if saved else "failed").inc()
        if saved:
            self.saved_seq = self.done_seq
            for state_listener in self.state_listeners:
                state_listener(self.saved_seq)

    async def save_state_exclusive(self, wait: bool = True) -> None:
        """``save_state`` between batches and with the detector lock held, without blocking the loop.

        Every snapshot of a running daemon: from outside the run loop (the Kafka receiver's hand-over
        at a rebalance) a batch may be in the detectors (the worker thread) meanwhile, and at any
        time an approval or a rule reload (``exclusive``) may be changing their state; the snapshot
        read that state halfway ("dict changed size during iteration", or an inconsistent
        snapshot). Uncontended (the run loop's own saves, between its batches) it takes the lock
        without yielding, so they happen exactly when they did. The lock is only tried on the
        loop (the detector thread holds it for a whole batch, whose end the loop must go on to
        process), and not between a batch's detectors and its accounting either, so ``saved_seq``
        covers exactly the batches in the state saved, as for the run loop's own snapshots.

        With ``snapshot_process`` the state is written by a forked child (the fork is what holds
        the lock) and batches go on meanwhile; ``saved_seq`` moves and ``state_listeners`` are
        called when the child has written it. ``wait``: return only then (a hand-over, the stop);
        without it (the run loop) return at once, and skip the save while another child runs (the
        request stays, for when it ends).
        """
        while True:
            if self._child is not None:
                if not wait:
                    return
                await asyncio.shield(self._child)  # its outcome does not matter: this save comes after it
                continue
            while self._observing or not self.detector_lock.acquire(blocking=False):
                await asyncio.sleep(LOCK_POLL_S)
            if self._child is None:
                break
            self.detector_lock.release()  # another caller forked one meanwhile
        try:
            child = self._fork_snapshot() if self.snapshot_process else None
            if child is None:
                self.save_state()
                return
        finally:
            self.detector_lock.release()
        self._child = asyncio.get_running_loop().create_task(self._await_child(child), name="state-snapshot")
        if wait and not await asyncio.shield(self._child) and self.saved_seq < child.seq:
            await self.save_state_exclusive()  # the child failed (and the run loop has not saved since): save here

    def _fork_snapshot(self) -> SnapshotChild | None:
        """A child writing the state as of now (detector lock held), or None if it cannot fork."""
        try:
            child = fork_snapshot(self.detectors, self.store.state_path, self.done_seq, self.store.reserve_generation(),
                                  self.store.clock(), self.child_cpus())
        except OSError as exc:
            log.warning("could not fork a process to save detector state (%s); saving in the daemon's process", exc)
            self.metrics.state_snapshots.labels("process", "failed").inc()
            return None
        self._last_snapshot = self.clock()
        self._snapshot_wanted = False
        return child

    async def _await_child(self, child: SnapshotChild) -> bool:
        try:
            error = await asyncio.to_thread(child.wait, self.snapshot_timeout_s)
        except asyncio.CancelledError:  # the loop is being torn down; the thread still reaps the child
            self._child = None
            raise
        except Exception as exc:
            error = f"waiting for it failed: {exc!r}"
        self._child = None
        self.last_save_s = child.cpu_s
        if error is None:
            self.metrics.state_snapshots.labels("process", "ok").inc()
            self.saved_seq = max(self.saved_seq, child.seq)
            for state_listener in self.state_listeners:
                state_listener(self.saved_seq)
        else:
            self.metrics.state_snapshots.labels("process", "failed").inc()
            self.snapshot_process = False
            log.warning("detector state snapshot process %d failed: %s; detector state is saved in the daemon's "
                        "process from now on (set pipeline.snapshot_process: off to choose that, and report this)",
                        child.pid, error)
            self._snapshot_wanted = True
        self._wake.set()
        return error is None

    @property
    def last_ticket(self) -> int:
        """The ticket of the newest accepted submit; done once ``done_seq >= last_ticket``."""
        return self._seq

    def request_snapshot(self) -> None:
        """Save detector state between batches, soon (call on the pipeline's event loop)."""
        self._snapshot_wanted = True
        self._wake.set()

    async def wait_progress(self) -> None:
        """Return after the next batch is processed (or at once when nothing is queued)."""
        if self._queue:
            self._progress.clear()
            await self._progress.wait()

    def admit(self, calls: list[ToolCall], listings: list[ToolListing]) -> "Admission":
        """Apply the event-time rule, then queue what it kept; refuse all of it if the queue is full.

        Nothing is counted or changed when the queue refuses: the client will send it again.
        """
        verdict = judge(self.event_time, calls, listings, int(self.wall_clock() * 1e9), self._admit_watermark_ns)
        if not self.submit(verdict.calls, verdict.listings):
            return Admission(False, verdict)
        self._admit_watermark_ns = verdict.watermark_ns
        for reason, n in verdict.rejected.items():
            self.metrics.event_time.labels("rejected", reason).inc(n)
        for reason, n in verdict.clamped.items():
            self.metrics.event_time.labels("clamped", reason).inc(n)
        return Admission(True, verdict)

    def full_for(self, spans: int) -> bool:
        """True when a request of ``spans`` spans may not fit: refuse it before normalising it."""
        return full_for(self._depth, spans, self.queue_max) or self._refuse_behind()

    def oldest_wait_s(self) -> float:
        """How long the oldest queued events have waited (0 when the queue is empty)."""
        return self.clock() - self._queue[0].arrived if self._queue else 0.0

    def behind(self) -> bool:
        """Whether the oldest queued events have waited longer than ``queue_max_wait_s`` past the
        batch delay: the detectors are not keeping up, and new events are refused until the queue
        is fresh again."""
        return bool(self.queue_max_wait_s) and self.oldest_wait_s() > self.batch_max_delay_s + self.queue_max_wait_s

    def _refuse_behind(self) -> bool:
        """``behind()``; when it is and the depth listeners were last told otherwise (the queue grew
        old with no change of depth), they are told now, so worker processes refuse early."""
        if not self.behind():
            return False
        if not self._shared_behind:
            self._depth_changed()
        return True

    def _depth_changed(self) -> None:
        self.metrics.queue_depth.set(self._depth)
        behind = self._shared_behind = self.behind()
        for depth_listener in self.depth_listeners:
            depth_listener(self._depth, behind)

    def submit(self, calls: list[ToolCall], listings: list[ToolListing]) -> bool:
        """Queue events as they are (no event-time rule: use ``admit``); False when the queue is full
        (``queue_max``) or ``behind``."""
        n = len(calls) + len(listings)
        if n == 0:
            return True
        if self._depth + n > self.queue_max:
            return False
        if self._refuse_behind():
            return False
        self._seq += 1
        self._queue.append(_Item(calls, listings, self.clock(), self._seq))
        self._depth += n
        self._depth_changed()
        self._idle.clear()
        self._wake.set()
        return True

    async def start(self) -> None:
        if self._task is None:
            self.restore_state()
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="pipeline")
            self._task.add_done_callback(self._ended)
            for running_listener in self.running_listeners:
                running_listener(True)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The run loop died on its own (``shutdown`` clears ``_task`` first and tells the listeners
        itself): log it, and the OTLP workers must stop refusing as if it ran."""
        if self._task is not task:
            return
        for running_listener in self.running_listeners:
            running_listener(False)
        if not task.cancelled() and task.exception() is not None:
            self._reported = task
            log.error("the pipeline's run loop stopped: %r; calls are queued but not processed until restart",
                      task.exception(), exc_info=task.exception())

    async def shutdown(self) -> None:
        """Stop after the batch in hand, process everything queued, save detector state.

        Not by cancelling the run loop: a cancel lands while a batch is with the detectors (in the
        worker thread, which goes on), and that batch's findings, alerts and accounting were lost
        while its effect on detector state was saved.

        A cancel of this shutdown waits for all of it (``finish_despite_cancel``) and is passed on
        then: awaiting the run loop directly handed the cancel on to it, mid-batch."""
        task, self._task = self._task, None
        if task is None:
            return
        for running_listener in self.running_listeners:
            running_listener(False)
        self._stopping = True
        self._wake.set()
        await finish_despite_cancel(self._finish(task), "pipeline-shutdown")

    async def _finish(self, task: asyncio.Task[None]) -> None:
        try:
            await task
        except (asyncio.CancelledError, Exception) as exc:  # cancelled from outside, or died: still drain and save
            # ``_ended`` logs a death only while the loop is the running one; one during the stop
            # (the batch in hand failing after shutdown took the task) went unlogged.
            if isinstance(exc, Exception) and self._reported is not task:
                log.error("the pipeline's run loop failed while stopping: %r; the queued calls are still processed "
                          "and detector state saved; report this error", exc, exc_info=exc)
        # A run loop cancelled from outside leaves its batch in the worker thread: wait for it, or the
        # final snapshot reads detector state while that batch changes it.
        await self.exclusive(lambda: None)
        await self._drain_all()
        await self.save_state_exclusive()

    async def drained(self, timeout: float = 10.0) -> None:
        """Wait until everything submitted so far has been processed (tests, replay)."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    async def _run(self) -> None:
        while not self._stopping:
            if self._snapshot_wanted:
                await self.save_state_exclusive(wait=False)
            if not self._queue:
                self._idle.set()
                await self._wake.wait()
                self._wake.clear()
                continue
            # Give a partial batch a moment to fill, bounded by the max delay.
            if self._depth < self.batch_max_size:
                deadline = self._queue[0].arrived + self.batch_max_delay_s
                while self._depth < self.batch_max_size and not self._stopping:
                    remaining = deadline - self.clock()
                    if remaining <= 0:
                        break
                    # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that arrives once the
                    # wake-up is already done, and this loop then waited out the full delay.
                    try:
                        async with asyncio.timeout(remaining):
                            await self._wake.wait()
                    except TimeoutError:
                        break
                    self._wake.clear()
            await self._process(self._take())
            if self.clock() - self._last_snapshot >= self.snapshot_interval_s:
                await self.save_state_exclusive(wait=False)

    def _take(self) -> list[_Item]:
        items, n = [], 0
        while self._queue and n < self.batch_max_size:
            item = self._queue.popleft()
            n += len(item.calls) + len(item.listings)
            items.append(item)
        self._depth -= n
        self._depth_changed()
        return items

    async def _drain_all(self) -> None:
        """Process everything queued (at shutdown). A batch that fails after the detectors saw it (a
        batch listener's error) is logged and the draining goes on: stopping at it left the calls
        behind it, already acknowledged, unprocessed, and the detector state unsaved."""
        while self._queue:
            try:
                await self._process(self._take())
            except Exception:
                log.exception("a batch failed while the pipeline drained for shutdown; the rest of the queue is "
                              "still processed and detector state saved; report this error")
        self._idle.set()

    async def _process(self, items: list[_Item]) -> None:
        batch = Batch()
        for item in items:
            batch.calls.extend(item.calls)
            batch.listings.extend(item.listings)
        batch.calls.sort(key=_TIME)
        batch.calls_in_time_order()  # detectors' by_time() is then the sorted list itself
        batch.listings.sort(key=_TIME)
        for t in (batch.calls[-1].time_ns if batch.calls else 0, batch.listings[-1].time_ns if batch.listings else 0):
            self._watermark_ns = max(self._watermark_ns, t)
        batch.watermark_ns = self._watermark_ns
        self._observing = True
        try:
            findings = await asyncio.to_thread(self._observe, batch)
            try:
                self._account(items, batch, findings)
            except Exception:
                # Its alerts may not be stored: ``done_seq`` stays below it from now on, so an
                # at-least-once source (Kafka) never commits it, however many batches follow.
                if not self._failed_seq:
                    self._failed_seq = items[0].seq
                raise
        finally:
            self._observing = False

    def _account(self, items: list[_Item], batch: Batch, findings: list[Finding]) -> None:
        """Everything after the detectors, on the loop: metrics, alerts, listeners, lag, progress.

        Its own method so bench/findings_path.py and tests can time and drive it without detectors.
        """
        self.metrics.batch_size.observe(len(batch))
        self.metrics.count_calls(map(_CALL_LABELS, batch.calls))
        for listing in batch.listings:
            self.metrics.count_listing(listing.server)
        if findings:
            self.metrics.observe_scores(findings)
            self.router.route(findings)
            for listener in self.listeners:
                listener(findings)
        for batch_listener in self.batch_listeners:
            batch_listener(batch, findings)
        now = self.clock()
        for item in items:
            self.metrics.lag.observe(max(0.0, now - item.arrived))
        self.processed += len(batch)
        self.done_seq = max(self.done_seq, max(item.seq for item in items))
        if self._failed_seq:
            self.done_seq = min(self.done_seq, self._failed_seq - 1)
        self._progress.set()

    def _observe(self, batch: Batch) -> list[Finding]:
        with self.detector_lock:
            return self._observe_locked(batch)

    def _observe_locked(self, batch: Batch) -> list[Finding]:
        findings: list[Finding] = []
        for det in self.detectors:
            try:
                findings.extend(det.observe(batch))
            except Exception:  # one broken detector never stops the others
                self.metrics.detector_errors.labels(det.name).inc()
                log.exception("detector %s failed on a batch of %d events", det.name, len(batch))
        return findings
