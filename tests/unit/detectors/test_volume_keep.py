"""The volume detector's top-N keeper (optimised) must keep exactly what the obvious version keeps."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from toolwatch.detectors.volume import SPANS_NAMED, _keep, _merge_top


def _reference_keep(top: list[list[Any]], item: list[Any]) -> None:
    top.append(item)
    if len(top) > SPANS_NAMED:
        top.remove(min(top, key=lambda x: x[0]))


@given(st.lists(st.integers(min_value=-5, max_value=5), max_size=60))
def test_keep_matches_append_then_drop_first_minimum(values: list[int]) -> None:
    fast: list[list[Any]] = []
    slow: list[list[Any]] = []
    for i, v in enumerate(values):  # small value range: many ties, which decide who stays
        _keep(fast, [v, f"span-{i}"])
        _reference_keep(slow, [v, f"span-{i}"])
        assert fast == slow
    assert len(fast) == min(len(values), SPANS_NAMED)



@given(st.lists(st.integers(min_value=0, max_value=4), max_size=14),
       st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=SPANS_NAMED))
def test_merge_top_is_keep_call_by_call(old: list[int], new: list[int]) -> None:
    """A window's batch candidates merged at once leave what ``_keep`` one by one leaves (ties: newer wins)."""
    start = [[v, f"old{i}"] for i, v in enumerate(old)]
    spans = [f"new{i}" for i in range(len(new))]
    want: list[list[Any]] = []
    for item in start + [[v, s] for v, s in zip(new, spans)]:
        _keep(want, item)
    got: list[list[Any]] = []
    for item in start:
        _keep(got, item)
    low = _merge_top(got, new, list(range(len(new))), spans)
    assert got == want
    assert low == (min(x[0] for x in want) if len(want) >= SPANS_NAMED else None)
