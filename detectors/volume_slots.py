"""Open volume windows as numpy slot arrays: the volume detector's per-batch state, updated in bulk.

Why: with 50 agents × 6 tools a 500-call batch touches ~350 (key, window) pairs; updating a
Python dict per pair (sums, named spans, top-ten lists, session counts) cost ~5 µs per span.
Here each open (key, window) pair is a *slot*: its sums live in int64 arrays (``np.add.at``
over the batch's rows), and its named spans, fastest/largest calls and sessions are rows of
four append-only tables (slot, sequence number, value, text). A table is reduced to what a
window can still show only when it grows large or a window is read (closing, snapshot), so a
batch costs a few numpy calls whatever its number of keys. Reading a slot gives exactly the
dict the call-by-call detector keeps (the snapshot format); loading such a dict gives a slot.

Every rule is order-free, which is what allows the deferral:

* ``spans``: the first ``SPANS_NAMED`` calls with a span id, by sequence;
* ``fast``/``big``: the ``SPANS_NAMED`` best by (value, sequence), a later call winning a tie
  (what "append, then drop the first minimum" keeps), listed by sequence;
* ``sessions``: the first ``MAX_SESSIONS`` distinct sessions by first call, each with its total.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MAX_SESSIONS", "SPANS_NAMED", "OpenWindows"]

SPANS_NAMED = 10
"""Spans a volume finding names (per window and kind: first, fastest, largest)."""
MAX_SESSIONS = 20
"""Sessions counted per window (the rest only count as calls)."""
_NONE = np.iinfo(np.int64).min
"""``low`` of a top list that is not full yet: every candidate may enter."""
_EMPTY_I = np.zeros(0, np.int64)
_EMPTY_O = np.zeros(0, object)


def _one(value: Any, dtype: Any = np.int64) -> np.ndarray:
    """A one-element array (a table row's column)."""
    a = np.empty(1, dtype)
    a[0] = value
    return a


def _rank(groups: np.ndarray) -> np.ndarray:
    """Position of each row inside its run of equal ``groups`` (rows sorted by group)."""
    n = len(groups)
    if not n:
        return _EMPTY_I
    at = np.arange(n, dtype=np.int64)
    edge = np.empty(n, bool)
    edge[0] = True
    edge[1:] = groups[1:] != groups[:-1]
    return at - np.maximum.accumulate(np.where(edge, at, 0))


def _batch_best(ok: np.ndarray, slot: np.ndarray, seq: np.ndarray, val: np.ndarray) -> np.ndarray:
    """``ok`` without the rows a top list can never keep: those past the ``SPANS_NAMED`` best of
    their slot in this batch, by (value, sequence), a later row winning a tie.

    Exact: a row beaten by ``SPANS_NAMED`` rows of its own batch is beaten by them in every later
    reduction too. The fleet's slot takes a row of nearly every call, most of them entering
    (ties at the tenth value enter), and its rows made up half of what ``reduce`` sorted.
    """
    s = slot[ok]
    if len(s) <= SPANS_NAMED:
        return ok
    counts = np.bincount(s)
    heavy = np.flatnonzero(counts > SPANS_NAMED)
    if not len(heavy):
        return ok
    at = np.flatnonzero(ok)
    ok = ok.copy()
    if len(heavy) == 1:  # the usual case (the fleet's slot): no sort at all
        rows = at[s == int(heavy[0])]
        ok[rows] = False
        ok[_top(rows, seq, val)] = True
        return ok
    rows = at[(counts > SPANS_NAMED)[s]]
    order = np.lexsort((~seq[rows], ~val[rows], slot[rows]))  # per slot: best first, later first on ties
    ok[rows[order[_rank(slot[rows][order]) >= SPANS_NAMED]]] = False
    return ok


def _sort_by(x: np.ndarray, top: int, order: np.ndarray | None = None) -> np.ndarray:
    """``order`` (default: the rows as they are) stably sorted by ``x`` (non-negative, below ``top``).

    In passes of 16 bits, least significant first: numpy's stable sort of 16-bit keys is a radix
    sort, of int64 keys a timsort some twenty times slower (``reduce`` sorted ~100,000 rows so,
    several times over)."""
    if order is None:
        order = np.arange(len(x), dtype=np.int64)
    shift = 0
    while True:
        digit = x[order] if shift == 0 and top <= 1 << 16 else (x[order] >> shift) & 0xFFFF
        order = order[np.argsort(digit.astype(np.uint16), kind="stable")]
        shift += 16
        if top <= 1 << shift:
            return order


def _top(rows: np.ndarray, seq: np.ndarray, val: np.ndarray) -> np.ndarray:
    """The ``SPANS_NAMED`` best of ``rows`` (more of them) by (value, sequence), a later row winning a tie.

    A selection, not a sort: every row above the tenth greatest value, and of the rows at that
    value the latest ones (sequence numbers are distinct). A lexsort of the fleet's slot's rows
    (every call of the batch) per top list cost ~15 µs per 500 calls, ~65 µs per 2000."""
    v = val[rows]
    cut = len(v) - SPANS_NAMED
    tenth = np.partition(v, cut)[cut]
    keep = v > tenth
    tied = np.flatnonzero(v == tenth)
    need = SPANS_NAMED - int(np.count_nonzero(keep))
    if need < len(tied):
        tied = tied[np.argsort(seq[rows[tied]])[len(tied) - need:]]
    keep[tied] = True
    return rows[keep]


class _Codes(dict[str, int]):
    """Session id -> code; an id not seen yet gets the next code when looked up.

    Why: codes for a batch in one pass (``map(codes.__getitem__, ...)``); new sessions come in most
    batches, and looking them up, scanning for misses and making a second list cost ~0.1 µs a call."""

    __slots__ = ()

    def __missing__(self, key: str) -> int:
        code = self[key] = len(self)
        return code


class _Table:
    """Rows (slot, seq, value, text, count) in appended chunks; ``rows()`` joins them."""

    __slots__ = ("chunks", "size")

    def __init__(self) -> None:
        self.chunks: list[tuple[np.ndarray, ...]] = []
        self.size = 0

    def add(self, slot: np.ndarray, seq: np.ndarray, val: np.ndarray, text: np.ndarray, cnt: np.ndarray) -> None:
        if len(slot):
            self.chunks.append((slot, seq, val, text, cnt))
            self.size += len(slot)

    def rows(self) -> tuple[np.ndarray, ...]:
        if not self.chunks:
            return _EMPTY_I, _EMPTY_I, _EMPTY_I, _EMPTY_O, _EMPTY_I
        if len(self.chunks) > 1:
            self.chunks = [tuple(np.concatenate(c) for c in zip(*self.chunks))]
        return self.chunks[0]

    def set(self, cols: tuple[np.ndarray, ...]) -> None:
        self.chunks = [cols] if len(cols[0]) else []
        self.size = len(cols[0])

    def keep(self, mask: np.ndarray) -> None:
        self.set(tuple(c[mask] for c in self.rows()))


class OpenWindows:
    """Slots for open (key, window) pairs: sums in arrays, named spans/top lists/sessions in tables."""

    def __init__(self) -> None:
        self.calls = np.zeros(64, np.int64)
        self.bytes = np.zeros(64, np.int64)
        self.errors = np.zeros(64, np.int64)
        self.alive = np.zeros(64, bool)
        self.has_top = np.zeros(64, bool)  # "fast"/"big" present (a call with a span id came)
        self.named_full = np.zeros(64, bool)  # as of the last reduction
        self.low = np.full((2, 64), _NONE, np.int64)  # per top list: value a candidate must reach
        self.sess_full = np.zeros(64, bool)  # MAX_SESSIONS sessions known (as of the last reduction) ...
        self.sess_set = np.full((64, MAX_SESSIONS), -1, np.int64)  # ... these: no other can enter any more
        self.sess_code = _Codes()  # session id -> code (the sessions table holds codes)
        self.sess_member = np.zeros(1, bool)
        """Per session code: in the set of some full slot (as of the last reduction; codes past the
        end are not). A full slot's row whose session is not a member cannot count, so its set is
        not looked at: once a window's first sessions have gone by, that is nearly every row."""
        self.free: list[int] = []
        self.dead: list[int] = []
        """Released slots whose table rows are still there: reused only after ``_compact`` drops the rows."""
        self.used = 0
        self.reduced = True
        """No rows were added since the last ``reduce`` (reading then needs none)."""
        self.named, self.fast, self.big, self.sessions = _Table(), _Table(), _Table(), _Table()
        self.seq = 0
        """Sequence number of the next row (call order across batches)."""

    # ----------------------------------------------------------------- slots
    def new_slot(self) -> int:
        if not self.free and len(self.dead) > max(64, self.used // 8):
            self._compact()
        if self.free:
            slot = self.free.pop()
        else:
            slot = self.used
            self.used += 1
            if slot >= len(self.calls):
                self._grow(2 * len(self.calls))
        self.calls[slot] = self.bytes[slot] = self.errors[slot] = 0
        self.alive[slot] = True
        self.has_top[slot] = self.named_full[slot] = False
        self.low[:, slot] = _NONE
        self.sess_full[slot] = False
        return slot

    def _grow(self, size: int) -> None:
        def grow(a: np.ndarray, fill: Any) -> np.ndarray:
            out = np.full(a.shape[:-1] + (size,), fill, a.dtype)
            out[..., :a.shape[-1]] = a
            return out
        self.calls, self.bytes, self.errors = grow(self.calls, 0), grow(self.bytes, 0), grow(self.errors, 0)
        self.alive, self.has_top, self.named_full = grow(self.alive, False), grow(self.has_top, False), \
            grow(self.named_full, False)
        self.low = grow(self.low, _NONE)
        self.sess_full = grow(self.sess_full, False)
        self.sess_set = grow(self.sess_set.T, -1).T.copy()

    def release(self, slots: list[int]) -> None:
        """Forget these slots (closed, evicted or dropped). Their rows go at the next ``_compact``:
        filtering every table per release made each eviction cost a pass over all open windows."""
        if not slots:
            return
        self.alive[slots] = False
        self.dead.extend(slots)

    def _compact(self) -> None:
        """Drop the rows of released slots, which may then be reused."""
        if not self.dead:
            return
        for table in (self.named, self.fast, self.big, self.sessions):
            if table.size:
                table.keep(self.alive[table.rows()[0]])
        self.free.extend(self.dead)
        self.dead = []

    # ----------------------------------------------------------------- ingest
    def session_codes(self, sessions: list[str]) -> np.ndarray:
        """Codes of session ids (new ids get new codes, in order)."""
        return np.fromiter(map(self.sess_code.__getitem__, sessions), np.int64, len(sessions))

    def session_code(self, session: str) -> int:
        """``session_codes`` for one id."""
        return self.sess_code[session]

    def add_one(self, slot: int, seq: int, size: int, error: bool, fast: int, span: str, session: int) -> None:
        """``add_rows`` for one row, in scalars (``span`` "" and ``session`` -1 when not set): a call
        counted key by key (it evicts a key) made ``add_rows``'s numpy set-up per key its main cost."""
        self.reduced = False
        self.calls[slot] += 1
        self.bytes[slot] += size
        if error:
            self.errors[slot] += 1
        if span:
            self.has_top[slot] = True
            s, q, one, text = _one(slot), _one(seq), _one(1), _one(span, object)
            if not self.named_full[slot]:
                self.named.add(s, q, one, text, one)
            if fast >= self.low[0, slot]:  # a tie enters: later wins
                self.fast.add(s, q, _one(fast), text, one)
            if size >= self.low[1, slot]:
                self.big.add(s, q, _one(size), text, one)
        if session >= 0 and (not self.sess_full[slot] or bool((self.sess_set[slot] == session).any())):
            k = _one(session)
            self.sessions.add(_one(slot), _one(seq), k, k, _one(1))
        self._reduce_if_large()

    def add_rows(self, slot: np.ndarray, seq: np.ndarray, size: np.ndarray, error: np.ndarray, fast: np.ndarray,
                 call: np.ndarray, span: np.ndarray, has_span: np.ndarray, session: np.ndarray,
                 has_session: np.ndarray) -> None:
        """Count rows (one per call and key): per row its ``slot``, ``seq``, ``size``, ``error``, ``fast``
        (minus the gap to the key's previous call) and ``call``, an index into the calls' ``span``
        ids and ``session`` codes; ``has_span``/``has_session`` per row say whether the id is set."""
        self.reduced = False
        np.add.at(self.calls, slot, 1)
        np.add.at(self.bytes, slot, size)
        np.add.at(self.errors, slot[error], 1)
        if has_span.any():
            s, q, c = slot[has_span], seq[has_span], call[has_span]
            self.has_top[s] = True
            one = np.ones(len(s), np.int64)
            for table, ok, val in ((self.named, ~self.named_full[s], one),
                                   (self.fast, fast[has_span] >= self.low[0, s], fast[has_span]),  # a tie enters:
                                   (self.big, size[has_span] >= self.low[1, s], size[has_span])):  # later wins
                if table is not self.named and len(s) > SPANS_NAMED:
                    ok = _batch_best(ok, s, q, val)
                if ok.any():
                    table.add(s[ok], q[ok], val[ok], span[c[ok]], one[ok])
        if has_session.any():
            s, k = slot[has_session], session[call[has_session]]
            full = self.sess_full[s]
            ok = ~full
            if full.any():  # a full window counts only its own sessions (looked up for its rows only)
                at = np.flatnonzero(full)
                member = self.sess_member
                at = at[member[np.minimum(k[at], len(member) - 1)]]
                if len(at):
                    ok[at] = (self.sess_set[s[at]] == k[at, None]).any(1)
            s, k = s[ok], k[ok]
            self.sessions.add(s, seq[has_session][ok], k, k, np.ones(len(s), np.int64))
        self._reduce_if_large()

    def _reduce_if_large(self) -> None:
        rows = self.named.size + self.fast.size + self.big.size + self.sessions.size
        # The live slots are counted only when the rows pass the floor (a scan of every slot per batch).
        if ((rows > 1 << 16 and rows > 96 * int(np.count_nonzero(self.alive[:self.used])))
                or len(self.sess_code) > (1 << 18) + 4 * self.sessions.size):  # (codes of dropped sessions)
            self.reduce()

    def load(self, slot: int, win: dict[str, Any]) -> None:
        """A window dict (the snapshot form) into ``slot``; its items come before any later call."""
        self.reduced = False
        self.calls[slot], self.bytes[slot], self.errors[slot] = int(win["calls"]), int(win["bytes"]), \
            int(win["errors"])
        self.has_top[slot] = "fast" in win

        def put(table: _Table, texts: list[str], vals: list[int], cnts: list[int]) -> None:
            n = len(texts)
            text = np.empty(n, object)
            text[:] = texts
            table.add(np.full(n, slot, np.int64), np.arange(self.seq, self.seq + n, dtype=np.int64),
                      np.asarray(vals, np.int64).reshape(n), text, np.asarray(cnts, np.int64).reshape(n))
            self.seq += n

        spans = list(win.get("spans", ()))
        put(self.named, spans, [0] * len(spans), [1] * len(spans))
        for name, table in (("fast", self.fast), ("big", self.big)):
            items = win.get(name) or []
            put(table, [x[1] for x in items], [int(x[0]) for x in items], [1] * len(items))
        sessions = dict(win.get("sessions", {}))
        codes = self.session_codes(list(sessions)).tolist()
        put(self.sessions, codes, codes, [int(v) for v in sessions.values()])

    # ----------------------------------------------------------------- reduce and read
    def reduce(self) -> None:
        """Cut every table to what its windows can still show (and refresh the entry thresholds).

        A slot's rows sit in a table in sequence order (appended in call order, set back sorted),
        so stable sorts by the other keys stand in for sorting by sequence too.
        """
        self._compact()
        # Each table's rows are picked and ordered by index on the number columns, then every
        # column is gathered once: gathering the span ids (an object column) costs several times
        # an int64 one, and was done three times per top list.
        top = self.used  # every slot number is below it
        s, q, v, t, c = self.named.rows()
        if len(s):
            order = _sort_by(s, top)
            s = s[order]
            keep = _rank(s) < SPANS_NAMED
            s, order = s[keep], order[keep]
            self.named.set((s, q[order], v[order], t[order], c[order]))
            counts = np.bincount(s, minlength=len(self.named_full))
            self.named_full |= counts >= SPANS_NAMED
        for m, table in enumerate((self.fast, self.big)):
            s, q, v, t, c = table.rows()
            if not len(s):
                continue
            order = np.arange(len(s) - 1, -1, -1)  # later first, then by value (~v: descending), then slot
            order = order[np.argsort(~v[order], kind="stable")]
            order = _sort_by(s, top, order)  # best first per slot
            ks = s[order]
            rank = _rank(ks)
            keep = rank < SPANS_NAMED
            order, ks, rank = order[keep], ks[keep], rank[keep]
            full = rank == SPANS_NAMED - 1  # the tenth best: the value a newcomer must reach
            self.low[m, :] = _NONE
            self.low[m, ks[full]] = v[order[full]]
            # Back to sequence order per slot (a slot's sequence numbers are distinct: any sort by them will do).
            order = order[_sort_by(ks, top, np.argsort(q[order]))]
            table.set((s[order], q[order], v[order], t[order], c[order]))
        s, q, k, _t, c = self.sessions.rows()
        if len(self.sess_code) > max(1 << 18, 4 * len(s)):  # codes of sessions long gone: renumber
            names = list(self.sess_code)
            live = np.unique(k)
            self.sess_code = _Codes({names[x]: i for i, x in enumerate(live.tolist())})
            k = np.searchsorted(live, k)
        self.sess_full[:] = False
        self.sess_set[:] = -1
        if len(s):
            order = _sort_by(s, top, _sort_by(k, int(k.max()) + 1))  # by (slot, session), then as they were
            s, q, k, c = s[order], q[order], k[order], c[order]
            first = np.empty(len(s), bool)
            first[0] = True
            first[1:] = (s[1:] != s[:-1]) | (k[1:] != k[:-1])
            starts = np.flatnonzero(first)
            c = np.add.reduceat(c, starts)
            s, q, k = s[starts], q[starts], k[starts]
            order = _sort_by(s, top, np.argsort(q))  # a slot's sessions have distinct first calls
            s, q, k, c = s[order], q[order], k[order], c[order]
            rank = _rank(s)
            keep = rank < MAX_SESSIONS
            s, q, k, c, rank = s[keep], q[keep], k[keep], c[keep], rank[keep]
            self.sess_set[s, rank] = k
            self.sess_full[s[rank == MAX_SESSIONS - 1]] = True
        member = np.zeros(len(self.sess_code) + 1, bool)  # the last: every code made after this
        member[self.sess_set[self.sess_full].reshape(-1)] = True  # a full slot's set has no -1
        self.sess_member = member
        self.sessions.set((s, q, k, k, c))
        self.reduced = True

    def read(self, slots: list[int]) -> dict[int, dict[str, Any]]:
        """The window dict of each slot, exactly as the call-by-call detector keeps it."""
        if not self.reduced:  # reducing twice gives the same rows: a snapshot per agent reads often
            self.reduce()
        want = np.zeros(len(self.calls), bool)
        want[slots] = True
        calls, nbytes, errors, top = (self.calls[slots].tolist(), self.bytes[slots].tolist(),
                                      self.errors[slots].tolist(), self.has_top[slots].tolist())
        out: dict[int, dict[str, Any]] = {}
        for slot, n, b, e, has in zip(slots, calls, nbytes, errors, top):
            out[slot] = win = {"calls": n, "bytes": b, "errors": e, "spans": [], "sessions": {}}
            if has:
                win["fast"], win["big"] = [], []

        def picked(table: _Table) -> tuple[list[Any], ...]:
            s, q, v, t, c = table.rows()
            mask = want[s]
            s, q, v, t, c = s[mask], q[mask], v[mask], t[mask], c[mask]
            order = np.lexsort((q, s))
            return s[order].tolist(), v[order].tolist(), t[order].tolist(), c[order].tolist()

        s, _v, t, _c = picked(self.named)
        for slot, text in zip(s, t):
            out[slot]["spans"].append(text)
        for name, table in (("fast", self.fast), ("big", self.big)):
            s, v, t, _c = picked(table)
            for slot, val, text in zip(s, v, t):
                out[slot][name].append([val, text])
        s, k, _t, c = picked(self.sessions)
        if s:
            names = list(self.sess_code)
            for slot, code, cnt in zip(s, k, c):
                out[slot]["sessions"][names[code]] = cnt
        return out
