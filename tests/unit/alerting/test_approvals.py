"""Approvals: found by duck typing, serialised with the detectors, state saved after a decision."""

from __future__ import annotations

import asyncio
import threading

import pytest

from toolwatch.collector.approvals import Approvals, UnknownApproval, find_approval_source


class Pins:
    name = "rugpull"

    def __init__(self):
        self.items = {"a": {"id": "a", "new": ("tuple", "becomes", "list")}}

    def pending(self):
        return list(self.items.values())

    def approve(self, pending_id):
        return self.items.pop(pending_id)

    def reject(self, pending_id):
        self.items.pop(pending_id)

    def snapshot(self):
        return {"pending": sorted(self.items)}


def test_finds_the_first_detector_with_the_whole_approval_surface():
    class Half:
        def pending(self):
            return []

    pins = Pins()
    assert find_approval_source([Half(), object(), pins]) is pins
    assert find_approval_source([Half()]) is None


async def test_decisions_wait_for_the_detector_lock_and_save_state_after():
    lock = threading.Lock()
    saved = []
    approvals = Approvals(Pins(), lock, save_state=lambda name, state: saved.append((name, state)))
    assert (await approvals.pending())[0]["new"] == ["tuple", "becomes", "list"]  # JSON-safe
    lock.acquire()  # a batch is being observed
    task = asyncio.create_task(approvals.approve("a"))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), 0.1)
    assert saved == []
    lock.release()
    result = await task
    assert result["decision"] == "approved" and saved == [("rugpull", {"pending": []})]
    with pytest.raises(UnknownApproval):
        await approvals.reject("a")
