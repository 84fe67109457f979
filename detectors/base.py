"""The one interface every detector implements, and a helper for per-agent state.

A detector is pure: it reads a micro-batch of events and returns findings. It never opens a
socket or a file, never touches metrics, never forwards. Its state is plain data (JSON-safe
dicts, lists, numbers; NumPy arrays converted to lists) so it can be stored and moved between
daemons without pickle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Generic, TypeVar

from .events import Batch, Finding

S = TypeVar("S")


class Detector(ABC):
    """Base of all detectors. ``name`` is stable: it keys stored state and alert routing."""

    name: str = ""

    @abstractmethod
    def observe(self, batch: Batch) -> list[Finding]:
        """Score/learn from one micro-batch and return what it found."""

    @abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """All state as JSON-safe plain data."""

    @abstractmethod
    def restore(self, state: dict[str, Any]) -> None:
        """Replace all state with a snapshot; ``restore(snapshot())`` changes no future score."""

    def after_fork_in_child(self) -> None:
        """Called in a snapshot process (collector/snapshot_process.py) before ``snapshot``: replace
        every lock ``snapshot`` takes that another thread of the daemon may have held at the fork
        (it stays held in the child, where that thread does not run)."""
        return None

    # Per-agent state, for scale-out: the collector moves an agent's state with its partition.
    def agents(self) -> list[str]:
        return []

    def snapshot_agent(self, agent_id: str) -> dict[str, Any] | None:
        return None

    def restore_agent(self, agent_id: str, state: dict[str, Any]) -> None:
        return None

    def drop_agent(self, agent_id: str) -> None:
        return None


class PerAgentDetector(Detector, Generic[S]):
    """A detector whose state is a dict of independent per-agent states.

    Subclasses say how one agent's state is made, serialised and read back; snapshot/restore and
    the per-agent methods then come for free and stay consistent with each other.
    """

    def __init__(self) -> None:
        self._state: dict[str, S] = {}

    @abstractmethod
    def new_state(self) -> S: ...

    @abstractmethod
    def state_to_dict(self, state: S) -> dict[str, Any]: ...

    @abstractmethod
    def state_from_dict(self, data: dict[str, Any]) -> S: ...

    def state_for(self, agent_id: str) -> S:
        st = self._state.get(agent_id)
        if st is None:
            st = self._state[agent_id] = self.new_state()
        return st

    def snapshot(self) -> dict[str, Any]:
        return {"agents": {a: self.state_to_dict(s) for a, s in self._state.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        self._state = {a: self.state_from_dict(s) for a, s in state.get("agents", {}).items()}

    def agents(self) -> list[str]:
        return list(self._state)

    def snapshot_agent(self, agent_id: str) -> dict[str, Any] | None:
        st = self._state.get(agent_id)
        return None if st is None else self.state_to_dict(st)

    def restore_agent(self, agent_id: str, state: dict[str, Any]) -> None:
        self._state[agent_id] = self.state_from_dict(state)

    def drop_agent(self, agent_id: str) -> None:
        self._state.pop(agent_id, None)
