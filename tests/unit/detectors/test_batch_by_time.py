"""``Batch.by_time``: the calls in event-time order, sorted once per batch for every detector."""

from __future__ import annotations

import random

from toolwatch.detectors.events import Batch, ToolCall


def _calls(n: int, seed: int) -> list[ToolCall]:
    rnd = random.Random(seed)
    return [ToolCall(time_ns=rnd.randrange(5), agent_id=f"a{i}", tool="t") for i in range(n)]


def test_by_time_is_the_stable_sort_by_time() -> None:
    calls = _calls(200, 1)
    b = Batch(calls=calls)
    assert b.by_time() == sorted(calls, key=lambda c: c.time_ns)  # ties keep their order (agent ids differ)
    assert [c.agent_id for c in b.by_time()] == [c.agent_id for c in sorted(calls, key=lambda c: c.time_ns)]
    assert b.calls is calls and b.calls == _calls(200, 1)  # the batch's own list is left as it was


def test_by_time_is_sorted_once_and_again_when_the_calls_change() -> None:
    b = Batch(calls=_calls(50, 2))
    first = b.by_time()
    assert b.by_time() is first  # shared by every detector of the batch
    late = ToolCall(time_ns=-1, agent_id="late", tool="t")
    b.calls.append(late)  # another length
    assert b.by_time()[0] is late
    b.calls = _calls(10, 3)  # another list
    assert b.by_time() == sorted(b.calls, key=lambda c: c.time_ns)
    assert Batch(calls=_calls(3, 4)) == Batch(calls=_calls(3, 4).copy())  # not part of equality
    b2 = Batch(calls=_calls(3, 4))
    b2.by_time()
    assert b2 == Batch(calls=_calls(3, 4)) and "by_time" not in repr(b2)


def test_calls_in_time_order_makes_by_time_the_calls_themselves_until_they_change() -> None:
    calls = sorted(_calls(100, 5), key=lambda c: c.time_ns)
    b = Batch(calls=calls)
    b.calls_in_time_order()
    assert b.by_time() is calls  # no sorted copy of a sorted list
    late = ToolCall(time_ns=-1, agent_id="late", tool="t")
    b.calls.append(late)  # another length: sorted again, as without the declaration
    assert b.by_time() is not calls and b.by_time()[0] is late
    assert b.by_time() == sorted(b.calls, key=lambda c: c.time_ns)
