"""The volume detector's top-N keeper (optimised) must keep exactly what the obvious version keeps."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from toolwatch.detectors.volume import SPANS_NAMED, _keep


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
