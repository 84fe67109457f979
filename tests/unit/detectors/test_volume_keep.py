"""A window slot's named spans, top-ten lists and sessions must be what the obvious one-by-one rules keep.

Whatever the batch cuts and wherever the tables are reduced (or a window is saved and loaded).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from toolwatch.detectors.volume_slots import MAX_SESSIONS, SPANS_NAMED, OpenWindows


def _reference_keep(top: list[list[Any]], item: list[Any]) -> None:
    top.append(item)
    if len(top) > SPANS_NAMED:
        top.remove(min(top, key=lambda x: x[0]))


def _reference(rows: list[tuple[int, int, str, str]]) -> dict[str, Any]:
    win: dict[str, Any] = {"calls": 0, "bytes": 0, "errors": 0, "spans": [], "sessions": {}}
    for i, (fast, size, span, session) in enumerate(rows):
        win["calls"] += 1
        win["bytes"] += size
        win["errors"] += i % 3 == 0
        if span and len(win["spans"]) < SPANS_NAMED:
            win["spans"].append(span)
        if span:
            _reference_keep(win.setdefault("fast", []), [fast, span])
            _reference_keep(win.setdefault("big", []), [size, span])
        if session and (session in win["sessions"] or len(win["sessions"]) < MAX_SESSIONS):
            win["sessions"][session] = win["sessions"].get(session, 0) + 1
    return win


_row = st.tuples(st.integers(min_value=-4, max_value=0), st.integers(min_value=0, max_value=4),
                 st.sampled_from(["", "p", "q", "r"] + [f"s{i}" for i in range(12)]),
                 st.sampled_from([""] + [f"x{i}" for i in range(30)]))


@given(rows=st.lists(_row, max_size=120), cuts=st.lists(st.integers(min_value=1, max_value=40), min_size=1),
       reduce_every=st.integers(min_value=1, max_value=4), reload_at=st.integers(min_value=-1, max_value=6))
def test_slot_keeps_what_one_by_one_keeps(rows: list[tuple[int, int, str, str]], cuts: list[int],
                                          reduce_every: int, reload_at: int) -> None:
    win = OpenWindows()
    other = win.new_slot()  # a neighbour slot: its rows must never leak into ours
    slot = win.new_slot()
    i = k = 0
    while i < len(rows):
        part = rows[i:i + cuts[k % len(cuts)]]
        n = len(part)
        fast, size, spans, sessions = (list(x) for x in zip(*part))
        span = np.empty(n, object)
        span[:] = spans
        call = np.tile(np.arange(n, dtype=np.int64), 2)
        slots = np.repeat(np.array([slot, other], np.int64), n)
        win.add_rows(slots, win.seq + call, np.array(size * 2, np.int64),
                     np.array([(i + j) % 3 == 0 for j in range(n)] * 2), np.array(fast * 2, np.int64),
                     call, span, np.array([bool(s) for s in spans] * 2), win.session_codes(sessions),
                     np.array([bool(s) for s in sessions] * 2))
        win.seq += n
        i, k = i + n, k + 1
        if k % reduce_every == 0:
            win.reduce()
        if k == reload_at:  # saved and loaded back mid-window: later calls come after what it held
            saved = win.read([slot])[slot]
            win.release([slot])
            slot = win.new_slot()
            win.load(slot, saved)
    assert win.read([slot])[slot] == _reference(rows)
    assert win.read([other])[other] == _reference(rows)
