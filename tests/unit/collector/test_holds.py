"""The hold book: validation, decisions, expiry to the default, and waiting for a human."""

from __future__ import annotations

import asyncio

import pytest

from toolwatch.collector.holds import AlreadyDecided, HoldBook, HoldError, UnknownHold


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


BODY = {"agent_id": "a1", "server": "fs", "tool": "delete_file", "arguments": '{"path":"<path>"}',
        "reason": "destructive", "rule": "destructive", "timeout_s": 30, "default": "deny"}


async def test_approve_then_a_second_decision_is_refused():
    book = HoldBook(clock=Clock())
    hold = book.create(BODY)
    assert hold.status == "pending" and hold.expires_at == 1030.0 and hold.id.startswith("hold_")
    assert book.decide(hold.id, "allow", "api").status == "approved"
    with pytest.raises(AlreadyDecided, match="already decided: approved"):
        book.decide(hold.id, "deny", "api")
    assert [h.id for h in book.list("approved")] == [hold.id] and book.list("pending") == []


async def test_expiry_applies_the_default_decision():
    clock = Clock()
    book = HoldBook(clock=clock)
    deny, allow = book.create(BODY), book.create({**BODY, "default": "allow", "timeout_s": 60})
    clock.now += 31
    assert (book.get(deny.id).status, book.get(deny.id).decision) == ("timed_out", "deny")
    assert book.get(allow.id).status == "pending"
    clock.now += 30
    assert (book.get(allow.id).status, book.get(allow.id).decision, book.get(allow.id).decided_by) == (
        "timed_out", "allow", "timeout")


async def test_wait_returns_as_soon_as_someone_decides():
    book = HoldBook()
    hold = book.create({**BODY, "timeout_s": 60})
    waiter = asyncio.create_task(book.wait(hold.id, 30))
    await asyncio.sleep(0)
    assert not waiter.done()
    book.decide(hold.id, "deny", "api")
    done = await asyncio.wait_for(waiter, 2)
    assert done.status == "denied" and done.decision == "deny"


async def test_wait_gives_up_after_wait_s_with_the_hold_still_pending():
    book = HoldBook()
    hold = book.create({**BODY, "timeout_s": 60})
    assert (await book.wait(hold.id, 0.01)).status == "pending"


@pytest.mark.parametrize("change, field", [
    ({"tool": ""}, "tool"), ({"timeout_s": 0}, "timeout_s"), ({"timeout_s": True}, "timeout_s"),
    ({"timeout_s": 99999}, "timeout_s"), ({"default": "maybe"}, "default"), ({"arguments": 3}, "arguments"),
])
async def test_bad_requests_name_the_field(change, field):
    with pytest.raises(HoldError, match=f"^{field}:"):
        HoldBook().create({**BODY, **change})


async def test_unknown_ids_and_bounded_memory():
    book = HoldBook(max_kept=3)
    with pytest.raises(UnknownHold):
        book.get("hold_nope")
    ids = [book.create(BODY).id for _ in range(3)]
    book.decide(ids[0], "deny", "api")
    book.create(BODY)
    assert ids[0] not in {h.id for h in book.list()}  # decided holds go first
    assert len(book.list("pending")) == 3
