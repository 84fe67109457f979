"""Operator approval of pending tool-definition changes, through whichever detector offers it.

A detector that pins tool definitions (the rug-pull detector) exposes ``pending()``,
``approve(id)`` and ``reject(id)``; the daemon finds it by duck typing, so it works with any such
detector and without one. Calls run in a worker thread under the pipeline's detector lock, so an
approval never interleaves with a batch being observed.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Iterable, Protocol, runtime_checkable


@runtime_checkable
class ApprovalSource(Protocol):
    name: str

    def pending(self) -> list[dict[str, Any]]: ...

    def approve(self, pending_id: str) -> Any: ...

    def reject(self, pending_id: str) -> Any: ...


class UnknownApproval(LookupError):
    """No pending change has this id (already decided, or never existed)."""


def find_approval_source(detectors: Iterable[object]) -> ApprovalSource | None:
    """The first detector with callable ``pending``, ``approve`` and ``reject``; None if there is none."""
    for det in detectors:
        if all(callable(getattr(det, m, None)) for m in ("pending", "approve", "reject")):
            return det  # type: ignore[return-value]
    return None


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(v) for v in value]
    return str(value)


class Approvals:
    def __init__(
        self,
        source: ApprovalSource,
        lock: threading.Lock,
        *,
        save_state: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.source = source
        self.lock = lock
        self.save_state = save_state
        """Called on the event loop after a decision with (detector name, snapshot taken under the lock)."""

    @property
    def detector(self) -> str:
        return str(getattr(self.source, "name", type(self.source).__name__))

    def _locked(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self.lock:
            return fn(*args)

    def _decide_locked(self, method: str, pending_id: str) -> tuple[Any, dict[str, Any] | None]:
        with self.lock:
            result = getattr(self.source, method)(pending_id)
            snapshot = getattr(self.source, "snapshot", None)
            return result, (snapshot() if self.save_state is not None and callable(snapshot) else None)

    async def pending(self) -> list[dict[str, Any]]:
        return _json_safe(await asyncio.to_thread(self._locked, self.source.pending))

    async def _decide(self, method: str, pending_id: str) -> dict[str, Any]:
        try:
            result, state = await asyncio.to_thread(self._decide_locked, method, pending_id)
        except KeyError:
            raise UnknownApproval(pending_id) from None
        if result is False:
            raise UnknownApproval(pending_id)
        if state is not None and self.save_state is not None:
            self.save_state(self.detector, state)  # on the loop, like every other store write
        return {"id": pending_id, "decision": "approved" if method == "approve" else "rejected",
                "detector": self.detector, "result": _json_safe(result)}

    async def approve(self, pending_id: str) -> dict[str, Any]:
        return await self._decide("approve", pending_id)

    async def reject(self, pending_id: str) -> dict[str, Any]:
        return await self._decide("reject", pending_id)
