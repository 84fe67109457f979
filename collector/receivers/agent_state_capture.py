"""Capture the state of the agents a batch touched, at each detector-state snapshot (scale-out, issue 9).

The Kafka receiver writes these captures to the state changelog before it commits the offsets they
cover, so a member that dies (even SIGKILL) leaves its agents' state in the changelog exactly as of
its last commit. Only agents touched since the previous capture are snapshotted; captures not yet
written are merged per agent (the newest wins), so what waits for the changelog is bounded by the
number of agents the member owns, however many snapshots come before a write succeeds.

Threads: ``on_batch`` and ``on_saved`` run on the pipeline's event loop, between batches (the
detectors are not observing); ``take`` / ``put_back`` / ``forget`` run on the consumer thread; a
lock guards what both sides touch.
"""

from __future__ import annotations

import threading
from typing import Iterable, Sequence

from toolwatch.detectors.base import Detector
from toolwatch.detectors.events import Batch, Finding

from .state_changelog import AgentStates


class AgentStateCapture:
    """Register ``on_batch`` as a pipeline batch listener and ``on_saved`` as a state listener."""

    def __init__(self, detectors: Sequence[Detector]) -> None:
        self.detectors = list(detectors)
        self._dirty: set[str] = set()
        self._lock = threading.Lock()
        self._pending: AgentStates = {}
        self._seq = 0

    @property
    def seq(self) -> int:
        """The pipeline ticket the newest capture covers (0 before the first snapshot)."""
        with self._lock:
            return self._seq

    def on_batch(self, batch: Batch, findings: list[Finding]) -> None:
        touched = {c.agent_id for c in batch.calls} | {t.agent_id for t in batch.listings}
        with self._lock:
            self._dirty |= touched

    def on_saved(self, seq: int) -> None:
        """The pipeline saved its state as of ticket ``seq``: snapshot the agents touched since the last time."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        captured: AgentStates = {}
        for agent in dirty:
            states = {d.name: st for d in self.detectors if (st := d.snapshot_agent(agent)) is not None}
            if states:
                captured[agent] = states
        with self._lock:
            self._pending.update(captured)
            self._seq = max(self._seq, seq)

    def take(self) -> tuple[int, AgentStates]:
        """-> (ticket covered, the captured states not yet written); the caller writes them or puts them back."""
        with self._lock:
            pending, self._pending = self._pending, {}
            return self._seq, pending

    def put_back(self, states: AgentStates) -> None:
        """A write failed: keep these for the next one, unless a newer capture of the agent came since."""
        with self._lock:
            for agent, st in states.items():
                self._pending.setdefault(agent, st)

    def forget(self, agents: Iterable[str]) -> None:
        """The agents moved to another member: their state is no longer ours to write."""
        gone = set(agents)
        with self._lock:
            for agent in gone:
                self._pending.pop(agent, None)
            self._dirty -= gone

    def pending_agents(self) -> int:
        with self._lock:
            return len(self._pending)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"AgentStateCapture(seq={self.seq}, pending={self.pending_agents()}, dirty={len(self._dirty)})"

