"""Volume spikes: call counts, bytes and error rates per agent, per agent×tool and fleet-wide.

Why: a hijacked or looping agent shows up first as "far more calls/bytes/errors than usual". The
baseline must survive the spikes it is meant to find, so it is robust: the median and MAD of the
last ``history_windows`` closed windows (with a Poisson floor for counts, so a perfectly steady
agent does not alert on one extra call). Spiky windows are clipped to the band's upper edge
before they are learned, so one incident does not teach the baseline, but a lasting change of
level still moves it.

Event time only: windows are ``[k·W, (k+1)·W)`` over span timestamps; a window closes when the
batch watermark passes its end plus ``allowed_lateness_s``. Calls for a still-open window count
(late or not); calls for a closed window are counted as ``late_dropped``. A replay therefore
gives the same findings as live traffic, and a spike is reported when its window closes: at most
one window (plus the allowed lateness) after it started, inside the two-window budget.
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import dataclass
from itertools import compress
from operator import attrgetter
from statistics import median
from typing import Any

import numpy as np

from .base import Detector
from .config_fields import load_flat, require
from .events import Batch, Finding, ToolCall
from .volume_slots import OpenWindows

__all__ = ["VolumeConfig", "VolumeSpikeDetector", "robust_band"]

FLEET = "*"
"""``agent_id`` of fleet-wide findings and bands."""


@dataclass(slots=True)
class VolumeConfig:
    """YAML key ``volume``."""

    window_s: int = 60
    history_windows: int = 30
    min_history: int = 5
    """Windows of history before anything is judged (explicit warm-up)."""
    k: float = 4.0
    """Band half-width in robust standard deviations (1.4826·MAD)."""
    min_calls_agent: int = 30
    min_calls_tool: int = 20
    min_calls_fleet: int = 50
    min_bytes: int = 1_000_000
    min_calls_bytes: int = 10
    """Calls a window needs before its bytes are judged (and at least half the scope's
    ``min_calls_*``): one huge result is the payload checks' business (exfiltration
    ``large_outbound_payload``), not a volume spike."""
    min_errors: int = 5
    min_error_rate_increase: float = 0.2
    allowed_lateness_s: int = 0
    per_tool: bool = True
    fleet: bool = True
    max_keys: int = 20_000
    idle_windows: int = 1440
    """Forget a key's baseline after this many windows without a call."""

    def validate(self) -> None:
        require(self.window_s >= 1, "window_s", "must be at least 1 second")
        require(self.history_windows >= 3, "history_windows", "must be at least 3")
        require(1 <= self.min_history <= self.history_windows, "min_history", "must be between 1 and history_windows")
        require(self.k > 0, "k", "must be greater than 0")
        for key in ("min_calls_agent", "min_calls_tool", "min_calls_fleet", "min_bytes", "min_errors",
                    "min_calls_bytes"):
            require(getattr(self, key) >= 0, key, "must not be negative")
        require(0.0 <= self.min_error_rate_increase <= 1.0, "min_error_rate_increase", "must be in [0, 1]")
        require(0 <= self.allowed_lateness_s <= self.window_s, "allowed_lateness_s",
                "must be between 0 and window_s (detection delay stays within two windows)")
        require(self.max_keys >= 10, "max_keys", "must be at least 10")
        require(self.idle_windows >= self.history_windows, "idle_windows", "must be at least history_windows")

    @classmethod
    def from_dict(cls, data: Any, path: str = "volume") -> "VolumeConfig":
        return load_flat(cls, data, path)


def _spans_for(win: dict[str, Any], metric: str) -> tuple[str, ...]:
    """Calls: the fastest-following calls; bytes: the largest; error rate: the window's first calls."""
    ranked = {"calls": win.get("fast"), "bytes": win.get("big")}.get(metric)
    if not ranked:
        return tuple(win["spans"])
    return tuple(span for _w, span in sorted(ranked, key=lambda x: -x[0]))


def robust_band(history: list[float], k: float, floor: float) -> tuple[float, float, float, float]:
    """(median, MAD, low, high) of a history; the scale never drops below ``floor``."""
    med = median(history)
    mad = median(abs(x - med) for x in history)
    scale = max(1.4826 * mad, floor)
    return med, mad, max(0.0, med - k * scale), med + k * scale


_METRICS = ("calls", "bytes", "error_rate")
_MIN_BATCH = 32
"""Calls are held until this many have come (or anything reads the state): numpy set-up per ingest
costs about what 30 calls do, and nothing observable happens between two window closes but
evictions (``bands`` counts held calls that could evict before it answers)."""
_FIRST_GAP = 10**15
"""Gap credited to a key's very first call (no earlier call to follow)."""
_MAX_SIZE = 1 << 48
"""Bytes counted per call at most (256 TiB): keeps a window's int64 sums exact; no real call comes near."""
_NO_WIN = np.iinfo(np.int64).min
_TIME = attrgetter("time_ns")
_ARGS_BYTES = attrgetter("args_bytes")
_RESULT_BYTES = attrgetter("result_bytes")
_TRIPLE = attrgetter("agent_id", "server", "tool")
_SPAN = attrgetter("span_id")
_SESSION = attrgetter("session_id")
_ERROR = attrgetter("error_type")


def _wrap64(x: int) -> int:
    """``x`` as int64 arithmetic leaves it (wrapped into [-2**63, 2**63))."""
    return ((x + (1 << 63)) & ((1 << 64) - 1)) - (1 << 63)


def _int64(values: list[int]) -> np.ndarray:
    """Values as int64, clipped into its range (a time past 2262 or an absurd size is not a reason to fail)."""
    try:
        return np.fromiter(values, np.int64, len(values))
    except (OverflowError, TypeError, ValueError):
        lo, hi = -(2**63), 2**63 - 1
        return np.array([min(max(int(v), lo), hi) for v in values], np.int64)


def _int64_of(calls: list[ToolCall], get: attrgetter) -> np.ndarray:
    """``_int64`` of a field of the calls, without the list in between unless a value needs clipping."""
    try:
        return np.fromiter(map(get, calls), np.int64, len(calls))
    except (OverflowError, TypeError, ValueError):
        return _int64(list(map(get, calls)))


class _Victims:
    """Which key an eviction drops: the non-fleet key with the least ``last_active``, the first in
    the key table's order on ties (what ``min`` over the table gives), without a scan per eviction.

    A heap of (last_active, place in the table's order, key, entry), built from the table at the
    first eviction; keys added after get later places. Entries are checked when they come to the
    top: a key gone or replaced (another entry object) is skipped, one whose ``last_active`` grew
    goes back in with its new value (it never shrinks while the entry lives). Whoever replaces the
    table's entries other than by adding keys (restore) starts a new ``_Victims``."""

    __slots__ = ("heap", "places")

    def __init__(self) -> None:
        self.heap: list[tuple[int, int, str, dict[str, Any]]] | None = None
        self.places = 0

    def added(self, key: str, entry: dict[str, Any]) -> None:
        """A key was added at the end of the table."""
        if self.heap is not None and entry["scope"] != "fleet":
            heapq.heappush(self.heap, (entry["last_active"], self.places, key, entry))
        self.places += 1

    def pop(self, keys: dict[str, dict[str, Any]]) -> str:
        heap = self.heap
        if heap is None or len(heap) > 2 * len(keys) + 64:  # build, or rebuild without the stale
            heap = self.heap = [(e["last_active"], i, k, e) for i, (k, e) in enumerate(keys.items())
                                if e["scope"] != "fleet"]
            heapq.heapify(heap)
            self.places = len(keys)
        while heap:
            active, place, key, entry = heap[0]
            if keys.get(key) is not entry:
                heapq.heappop(heap)
            elif entry["last_active"] != active:
                heapq.heapreplace(heap, (entry["last_active"], place, key, entry))
            else:
                heapq.heappop(heap)
                return key
        raise ValueError("volume: no key to evict (only the fleet's)")


class VolumeSpikeDetector(Detector):
    """Per agent, agent×tool and fleet: tumbling event-time windows vs. a median/MAD band."""

    name = "volume"

    def __init__(self, config: VolumeConfig | None = None) -> None:
        self.config = config or VolumeConfig()
        self.config.validate()
        self._w = self.config.window_s * 1_000_000_000
        self._lateness = self.config.allowed_lateness_s * 1_000_000_000
        self._next_open: int | None = None  # first window index not yet closed
        self._watermark = 0
        self._late_dropped = 0
        # key -> {"scope", "agent", "tool", "next", "last_active", "last_ns", "hist": {metric: [...]}, "last": {...}}
        self._keys: dict[str, dict[str, Any]] = {}
        # key -> {window index: slot in self._win}; the window's dict is ``self._win.read([slot])``
        self._open: dict[str, dict[int, int]] = {}
        self._win = OpenWindows()
        # Calls not yet counted (fewer than _MIN_BATCH). Held by reference: the pipeline settles a
        # call's fields (event-time clamping) before any detector sees it and never changes them after.
        self._pending: list[ToolCall] = []
        # Derived from config: key id (kid) per key; per (agent, server, tool) a row of _kid_matrix
        # (its kids per scope). Per kid: the window its calls went to last and that window's slot
        # (_NO_WIN: look it up), and its entry's "last_ns" (_last_ok: held here, newer than the
        # entry when _last_dirty; _sync_last writes them back before anyone reads or drops entries).
        self._kid: dict[str, int] = {}
        self._items: list[tuple[str, str, str, str]] = []
        self._trow: dict[tuple[str, str, str], int] = {}
        self._kid_matrix = np.zeros((0, 1 + self.config.per_tool + self.config.fleet), np.int64)
        self._cur_win = np.full(64, _NO_WIN, np.int64)
        self._cur_slot = np.zeros(64, np.int64)
        self._last_ns = np.zeros(64, np.int64)
        self._last_has = np.zeros(64, bool)
        self._last_ok = np.zeros(64, bool)
        self._last_dirty = np.zeros(64, bool)
        self._victims = _Victims()
        # What ``bands`` last answered per (scope, metric), and the ``_bands_version`` it is of. The
        # pipeline asks every batch (per-agent metrics), but bands only move when windows close or
        # keys go: a scan of every key per batch for the same answer cost ~0.1 µs/span.
        self._bands_version = 0
        self._bands_cache: dict[tuple[str, str], tuple[int, dict[str, tuple[float, float, float]]]] = {}

    # ----------------------------------------------------------------- ingest
    def observe(self, batch: Batch) -> list[Finding]:
        calls = batch.calls
        if self._next_open is None:
            if not calls:
                return []
            self._next_open = min(c.time_ns for c in calls) // self._w
        if calls:
            self._pending.extend(calls)
            if len(self._pending) >= _MIN_BATCH:
                self._flush()
        watermark = batch.watermark_ns or max((c.time_ns for c in calls), default=0)
        self._watermark = max(self._watermark, watermark)
        return self._advance()

    def _flush(self) -> None:
        """Count the held calls (before anything reads or closes windows: late-ness is unchanged)."""
        if self._pending:
            calls, self._pending = self._pending, []
            if len(self._items) > 4 * self.config.max_keys:  # key ids of long-gone keys: start afresh
                self._sync_last()
                self._kid, self._items, self._trow = {}, [], {}
                self._kid_matrix = self._kid_matrix[:0]
                self._forget_hot()
            self._ingest(calls)

    def _keys_for(self, call: ToolCall) -> list[tuple[str, str, str, str]]:
        keys = [(json.dumps(["agent", call.agent_id]), "agent", call.agent_id, "")]
        if self.config.per_tool:
            keys.append((json.dumps(["agent_tool", call.agent_id, call.token]), "agent_tool", call.agent_id, call.token))
        if self.config.fleet:
            keys.append((json.dumps(["fleet"]), "fleet", FLEET, ""))
        return keys

    def _triple_row(self, triple: tuple[str, str, str]) -> int:
        """Row of ``_kid_matrix`` for a (agent, server, tool) (added, with new key ids, if new)."""
        row = self._trow.get(triple)
        if row is None:
            out = []
            for item in self._keys_for(ToolCall(time_ns=0, agent_id=triple[0], server=triple[1], tool=triple[2])):
                kid = self._kid.get(item[0])
                if kid is None:
                    kid = self._kid[item[0]] = len(self._items)
                    self._items.append(item)
                out.append(kid)
            row = self._trow[triple] = len(self._kid_matrix)
            self._kid_matrix = np.concatenate([self._kid_matrix, np.array([out], np.int64)])
            if len(self._items) > len(self._cur_win):
                size = 2 * len(self._items)

                def grow(a: np.ndarray, fill: Any) -> np.ndarray:
                    return np.concatenate([a, np.full(size - len(a), fill, a.dtype)])
                self._cur_win, self._cur_slot = grow(self._cur_win, _NO_WIN), grow(self._cur_slot, 0)
                self._last_ns, self._last_has = grow(self._last_ns, 0), grow(self._last_has, False)
                self._last_ok, self._last_dirty = grow(self._last_ok, False), grow(self._last_dirty, False)
        return row

    def _rows_making_new(self, calls: list[ToolCall]) -> list[int]:
        """Each call's ``_kid_matrix`` row, rows for new (agent, server, tool)s made in call order.

        Only the calls that miss go through Python, found with ``list.index`` at C speed: a third
        of the fleet's batches bring a new triple (anomalies, new sessions' tools), and a
        comprehension over the whole batch for them cost ~0.2 µs a call on average."""
        triples = list(map(_TRIPLE, calls))
        rows = list(map(self._trow.get, triples))
        find = rows.index
        i = -1
        while True:
            try:
                i = find(None, i + 1)
            except ValueError:
                return rows
            rows[i] = self._triple_row(triples[i])  # a later call of the same triple: the row made here

    def _forget_hot(self) -> None:
        """Windows closed or keys went: look every key's window up again."""
        self._cur_win[:] = _NO_WIN

    def _sync_last(self, forget: bool = True) -> None:
        """Write the held "last_ns" back into the entries (``forget``: and read them afresh next time)."""
        dirty = np.flatnonzero(self._last_dirty)
        if len(dirty):
            keys, items = self._keys, self._items
            for kid, last in zip(dirty.tolist(), self._last_ns[dirty].tolist()):
                entry = keys.get(items[kid][0])
                if entry is not None:
                    entry["last_ns"] = last
            self._last_dirty[:] = False
        if forget:
            self._last_ok[:] = False

    def _ingest(self, calls: list[ToolCall]) -> None:
        while calls:
            calls = self._ingest_part(calls)

    def _ingest_part(self, calls: list[ToolCall]) -> list[ToolCall]:
        """Count calls exactly as one by one: per call its keys in order (agent, agent×tool, fleet).

        Columnar: one row per (call, key); sums go to the window slots with ``np.add.at``, named
        spans and sessions to the slots' tables. Python runs per batch, and per (key, window)
        only when a key's window is new to it. A new key that must evict another is counted on
        its own, in call order, since which key goes depends on what came before; the calls after
        it are returned, to be counted next.
        """
        n = len(calls)
        t = _int64_of(calls, _TIME)
        w = t // self._w
        live = w >= self._next_open
        late = n - int(np.count_nonzero(live))
        self._late_dropped += late
        if late == n:
            return []
        if late:
            calls = list(compress(calls, live.tolist()))
            t, w, n = t[live], w[live], n - late
        try:  # no lists in between (and no scan for None): ~40 ns a call
            rows = np.fromiter(map(self._trow.get, map(_TRIPLE, calls)), np.int64, n)
        except TypeError:  # an (agent, server, tool) new to the detector: its row is made
            rows = np.fromiter(self._rows_making_new(calls), np.int64, n)
        kid_rows = self._kid_matrix[rows]  # (call, scope)
        if n > 1 and int(t.max()) - int(t.min()) >= 2**62 // (kid_rows.size + 1):
            half = n // 2  # the per-key running max below needs key × time span to fit int64
            self._ingest(calls[:half])
            self._ingest(calls[half:])
            return []
        room = self.config.max_keys - len(self._keys)
        if kid_rows.size > room:
            items, keys = self._items, self._keys
            new = {int(k) for k in np.unique(kid_rows).tolist() if items[k][0] not in keys}
            if len(new) > room:
                return self._ingest_evicting(calls, kid_rows, t, w)
        size = (np.minimum(np.maximum(_int64_of(calls, _ARGS_BYTES), 0), _MAX_SIZE)
                + np.minimum(np.maximum(_int64_of(calls, _RESULT_BYTES), 0), _MAX_SIZE))
        spans = np.fromiter(map(_SPAN, calls), object, n)
        codes = self._win.session_codes(list(map(_SESSION, calls)))
        empty = self._win.sess_code.get("")  # "" gets a code too; a call without a session has it
        cols = (t, w, size, np.fromiter(map(_ERROR, calls), object, n).astype(bool),
                spans, spans.astype(bool), codes, np.ones(n, bool) if empty is None else codes != empty)
        n_scopes = kid_rows.shape[1]
        rk = kid_rows.T.reshape(-1)  # scope-major: row r is call r % n under scope r // n
        pos = np.tile(np.arange(n, dtype=np.int64), n_scopes)
        order = pos * n_scopes + np.repeat(np.arange(n_scopes, dtype=np.int64), n)
        self._ingest_rows(cols, rk, pos, order)
        self._win.seq += n
        return []

    def _ingest_evicting(self, calls: list[ToolCall], kid_rows: np.ndarray, t: np.ndarray,
                         w: np.ndarray) -> list[ToolCall]:
        """Up to each call whose new key finds no room: at once; that call key by key; and on.

        Each stretch is found from the key table as it is when the stretch starts (the evictions
        before it may have dropped keys that its calls use): one pass over the calls, where
        handing the rest back to ``_ingest_part`` examined all of it again after every eviction
        (quadratic at key churn)."""
        rows = kid_rows.tolist()
        items, keys = self._items, self._keys
        n, start = len(calls), 0
        while True:
            room = self.config.max_keys - len(keys)
            seen: set[int] = set()
            c = start
            while c < n:
                seen.update(k for k in rows[c] if items[k][0] not in keys)
                if len(seen) > room:
                    break
                c += 1
            if c > start:
                self._ingest(calls[start:c])  # no key of these needs an eviction
            if c == n:
                return []
            call = calls[c]
            size = min(max(0, call.args_bytes), _MAX_SIZE) + min(max(0, call.result_bytes), _MAX_SIZE)
            tc, wc = int(t[c]), int(w[c])
            for kid in rows[c]:
                if items[kid][0] not in keys:
                    self._evict_if_full()
                self._ingest_one(kid, tc, wc, size, call.is_error, call.span_id, call.session_id)
            self._win.seq += 1
            start = c + 1

    def _ingest_one(self, kid: int, t: int, w: int, size: int, error: bool, span: str, session: str) -> None:
        """``_ingest_rows`` for one row (a call counted key by key), in scalars: the same gap, slot,
        sums, table rows and held "last_ns"; some forty numpy calls on one-element arrays made
        each key of an evicting call cost ~100 µs at key churn."""
        if not self._last_ok[kid]:
            entry = self._keys.get(self._items[kid][0])
            last = None if entry is None else entry.get("last_ns")
            self._last_has[kid], self._last_ns[kid], self._last_ok[kid] = last is not None, last or 0, True
        has_last, last_ns = bool(self._last_has[kid]), int(self._last_ns[kid])
        prev = last_ns if has_last else _wrap64(t - _FIRST_GAP)
        fast = _wrap64(-abs(_wrap64(t - prev)))  # int64 arithmetic, as the arrays do it
        slot = int(self._cur_slot[kid]) if self._cur_win[kid] == w else self._open_window(kid, w)
        win = self._win
        code = win.session_code(session)  # "" gets a code too, as session_codes gives it
        win.add_one(slot, win.seq, size, error, fast, span, code if session else -1)
        self._last_ns[kid] = (t if t > last_ns else last_ns) if has_last else t
        self._last_has[kid] = self._last_dirty[kid] = True

    def _ingest_rows(self, cols: tuple[np.ndarray, ...], rk: np.ndarray, pos: np.ndarray, order: np.ndarray) -> None:
        """Rows (key id ``rk``, call ``pos``); ``order`` is the rows' order one by one (creation order)."""
        t, w, size, error, span, has_span, session, has_session = cols
        keys, items = self._keys, self._items
        rt, rw = t[pos], w[pos]

        # Gap to the key's latest earlier call (its running max time), per key in call order.
        present = np.zeros(len(items), bool)
        present[rk] = True
        uk = np.flatnonzero(present)
        n_keys = len(uk)
        inverse = np.zeros(len(items), np.int64)
        inverse[uk] = np.arange(n_keys, dtype=np.int64)
        local = inverse[rk]
        t_lo = int(rt.min())
        t_span = int(rt.max()) - t_lo + 1
        known = self._last_ok[uk]
        if not known.all():
            for kid in uk[~known].tolist():
                entry = keys.get(items[kid][0])
                last = None if entry is None else entry.get("last_ns")
                self._last_has[kid], self._last_ns[kid], self._last_ok[kid] = last is not None, last or 0, True
        has_last, last_ns = self._last_has[uk], self._last_ns[uk]
        # A key has one scope, and a scope's rows are in call order: a stable sort by key suffices.
        by_key = np.argsort(local.astype(np.int16 if n_keys < 2**15 else np.int64), kind="stable")
        ks, ts = local[by_key], rt[by_key]
        base = ks * t_span
        run = np.maximum.accumulate(ts - t_lo + base)
        first = np.empty(len(ks), bool)
        first[0] = True
        first[1:] = ks[1:] != ks[:-1]
        before = np.empty_like(run)
        before[0] = 0
        before[1:] = run[:-1] - base[1:] + t_lo
        k_has, k_last = has_last[ks], last_ns[ks]
        prev = np.where(first, np.where(k_has, k_last, ts - _FIRST_GAP),
                        np.where(k_has, np.maximum(before, k_last), before))
        fast = np.empty_like(rt)
        fast[by_key] = -np.abs(ts - prev)
        key_max = np.full(n_keys, np.iinfo(np.int64).min, np.int64)
        np.maximum.at(key_max, local, rt)

        # Slot per row: the key's current window, else (key, window) looked up or opened in call order.
        hit = self._cur_win[rk] == rw
        slot = self._cur_slot[rk]
        if not hit.all():
            miss = np.flatnonzero(~hit)
            mk, mw, mo = rk[miss], rw[miss], order[miss]
            by = np.lexsort((mo, mw, mk))
            mk, mw, mo = mk[by], mw[by], mo[by]
            edge = np.empty(len(mk), bool)
            edge[0] = True
            edge[1:] = (mk[1:] != mk[:-1]) | (mw[1:] != mw[:-1])
            starts = np.flatnonzero(edge)
            g_slot = np.empty(len(starts), np.int64)
            g_kid, g_win = mk[starts].tolist(), mw[starts].tolist()
            for g in np.argsort(mo[starts], kind="stable").tolist():  # creation order = order of first call
                g_slot[g] = self._open_window(g_kid[g], g_win[g])
            miss_slot = np.empty(len(miss), np.int64)
            miss_slot[by] = g_slot[np.cumsum(edge) - 1]
            slot[miss] = miss_slot
        seq = self._win.seq + pos
        self._win.add_rows(slot, seq, size[pos], error[pos], fast, pos, span, has_span[pos], session,
                           has_session[pos])
        self._last_ns[uk] = np.where(has_last, np.maximum(key_max, last_ns), key_max)
        self._last_has[uk] = self._last_dirty[uk] = True

    def _open_window(self, kid: int, idx: int) -> int:
        """The key's entry (made if new, widened to ``idx``) and the slot of its window ``idx`` (made if new)."""
        key, scope, agent, tool = self._items[kid]
        keys = self._keys
        entry = keys.get(key)
        if entry is None:
            entry = keys[key] = {"scope": scope, "agent": agent, "tool": tool, "next": idx, "last_active": idx,
                                 "hist": {m: [] for m in _METRICS}, "last": None}
            self._victims.added(key, entry)
        if idx < entry["next"]:
            entry["next"] = idx
        if idx > entry["last_active"]:
            entry["last_active"] = idx
        opens = self._open.get(key)
        if opens is None:
            opens = self._open[key] = {}
        slot = opens.get(idx)
        if slot is None:
            slot = opens[idx] = self._win.new_slot()
        self._cur_win[kid] = idx
        self._cur_slot[kid] = slot
        return slot

    def _drop_key(self, key: str) -> list[int]:
        """Forget a key; returns the slots of its open windows (to release)."""
        self._bands_version += 1
        self._keys.pop(key)
        return list(self._open.pop(key, {}).values())

    def _evict_if_full(self) -> None:
        """Drop the least recently active key (not the fleet's) when the table is full.

        Only the victim's held state is forgotten (its slots are released; no other key's window,
        slot or "last_ns" changes), and the victim comes from ``_Victims``: clearing every key's
        cache and scanning every key per eviction made key churn slower than before the slots."""
        if len(self._keys) < self.config.max_keys:
            return
        victim = self._victims.pop(self._keys)
        self._win.release(self._drop_key(victim))
        kid = self._kid.get(victim)
        if kid is not None:
            self._cur_win[kid] = _NO_WIN
            self._last_ok[kid] = self._last_dirty[kid] = False

    # ----------------------------------------------------------------- close windows
    def _advance(self) -> list[Finding]:
        assert self._next_open is not None
        upto = (self._watermark - self._lateness) // self._w
        if upto <= self._next_open:
            return []
        self._flush()
        self._forget_hot()
        self._sync_last()
        self._bands_version += 1  # windows close: their keys' "last" changes
        closing = [slot for opens in self._open.values() for idx, slot in opens.items() if idx < upto]
        wins = self._win.read(closing) if closing else {}
        released = set(closing)
        findings: list[Finding] = []
        for key in list(self._keys):
            entry = self._keys[key]
            if entry["last_active"] < upto - self.config.idle_windows:
                released.update(self._drop_key(key))
                continue
            findings.extend(self._close_key(key, entry, upto, wins))
        self._win.release(sorted(released))
        self._next_open = upto
        return findings

    def _close_key(self, key: str, entry: dict[str, Any], upto: int, wins: dict[int, dict[str, Any]]) -> list[Finding]:
        opens = self._open.get(key, {})
        findings: list[Finding] = []
        cur = entry["next"]
        for idx in sorted(i for i in opens if i < upto) + [upto]:
            for _ in range(min(idx - cur, self.config.history_windows)):
                self._learn(entry, "calls", 0.0)
                self._learn(entry, "bytes", 0.0)
            if idx == upto:
                break
            findings.extend(self._judge(entry, idx, wins[opens.pop(idx)]))
            cur = idx + 1
        entry["next"] = upto
        if not opens:
            self._open.pop(key, None)
        return findings

    def _learn(self, entry: dict[str, Any], metric: str, value: float) -> None:
        hist: list[float] = entry["hist"][metric]
        hist.append(value)
        del hist[:-self.config.history_windows]

    def _floor(self, metric: str, med: float) -> float:
        if metric == "calls":
            return max(1.0, math.sqrt(med))
        if metric == "bytes":
            return max(1.0, 0.1 * med)
        return 0.02

    def _judge(self, entry: dict[str, Any], idx: int, win: dict[str, Any]) -> list[Finding]:
        cfg = self.config
        min_calls = {"agent": cfg.min_calls_agent, "agent_tool": cfg.min_calls_tool, "fleet": cfg.min_calls_fleet}[
            entry["scope"]]
        values = {"calls": float(win["calls"]), "bytes": float(win["bytes"])}
        if win["calls"]:
            values["error_rate"] = win["errors"] / win["calls"]
        findings: list[Finding] = []
        last: dict[str, Any] = {"window_start_ns": idx * self._w}
        for metric, value in values.items():
            hist = entry["hist"][metric]
            band = None
            if len(hist) >= cfg.min_history:
                med, mad, low, high = band = robust_band(hist, cfg.k, self._floor(metric, median(hist)))
                spike = value > high and {
                    "calls": value >= min_calls,
                    "bytes": value >= cfg.min_bytes and win["calls"] >= max(cfg.min_calls_bytes, min_calls / 2),
                    "error_rate": win["errors"] >= cfg.min_errors and win["calls"] >= min_calls / 2
                    and value >= med + cfg.min_error_rate_increase,
                }[metric]
                if spike:
                    findings.append(self._finding(entry, idx, win, metric, value, band))
                value = min(value, high)  # clip before learning: one incident does not teach the baseline
            last[metric] = {"value": values[metric], "band": list(band) if band else None}
            self._learn(entry, metric, value)
        entry["last"] = last
        return findings

    def _finding(self, entry: dict[str, Any], idx: int, win: dict[str, Any], metric: str, value: float,
                 band: tuple[float, float, float, float]) -> Finding:
        med, mad, low, high = band
        scale = max(1.4826 * mad, self._floor(metric, med))
        z = (value - med) / scale
        who = {"agent": f"agent {entry['agent']!r}", "agent_tool": f"agent {entry['agent']!r} on {entry['tool']!r}",
               "fleet": "the fleet"}[entry["scope"]]
        shown = f"{value:.0%}" if metric == "error_rate" else f"{value:.0f}"
        base = f"{med:.0%}" if metric == "error_rate" else f"{med:.0f}"
        top = f"{high:.0%}" if metric == "error_rate" else f"{high:.0f}"
        sessions = win["sessions"]
        server, _, tool = entry["tool"].rpartition("/") if "/" in entry["tool"] else ("", "", entry["tool"])
        return Finding(
            detector=self.name, severity="high" if z >= 2 * self.config.k else "medium", agent_id=entry["agent"],
            reason=f"{who}: {metric.replace('_', ' ')} {shown} in a {self.config.window_s}s window "
                   f"(baseline {base}, band up to {top})",
            time_ns=(idx + 1) * self._w, session_id=max(sessions, key=sessions.get) if sessions else "",
            server=server, tool=tool, span_ids=_spans_for(win, metric), score=round(z, 3),
            evidence={"scope": entry["scope"], "metric": metric, "window_start_ns": idx * self._w,
                      "window_s": self.config.window_s, "value": value, "calls": win["calls"],
                      "errors": win["errors"], "bytes": win["bytes"], "median": med, "mad": mad, "low": low,
                      "high": high, "robust_z": round(z, 3)},
            dedup_key=f"volume:{entry['scope']}:{entry['agent']}:{entry['tool']}:{metric}")

    # ----------------------------------------------------------------- read-outs
    def bands(self, scope: str = "agent", metric: str = "calls") -> dict[str, tuple[float, float, float]]:
        """Last closed window per key: (value per second for counts, else value; low; high). NaN band in warm-up.

        Worked out again only when windows closed or keys went (or were restored) since the last call.
        Held calls (fewer than ``_MIN_BATCH``) are counted first when they could evict a key: that
        is the one way they change an answer (their keys have no closed window yet), and an evicted
        key shown, or a new key's victim kept, was not what the calls observed so far leave."""
        if self._pending and len(self._pending) * self._kid_matrix.shape[1] > self.config.max_keys - len(self._keys):
            self._flush()
        cached = self._bands_cache.get((scope, metric))
        if cached is not None and cached[0] == self._bands_version:
            return dict(cached[1])
        out = self._bands(scope, metric)
        self._bands_cache[(scope, metric)] = (self._bands_version, out)
        return dict(out)

    def _bands(self, scope: str, metric: str) -> dict[str, tuple[float, float, float]]:
        per_s = metric in ("calls", "bytes")
        out: dict[str, tuple[float, float, float]] = {}
        for entry in self._keys.values():
            if entry["scope"] != scope or not entry["last"] or metric not in entry["last"]:
                continue
            item = entry["last"][metric]
            div = self.config.window_s if per_s else 1
            low, high = (item["band"][2], item["band"][3]) if item["band"] else (math.nan, math.nan)
            label = entry["agent"] if scope != "agent_tool" else f"{entry['agent']}\x1f{entry['tool']}"
            out[label] = (item["value"] / div, low / div, high / div)
        return out

    def rate_bands(self) -> dict[str, tuple[float, float, float]]:
        """Per agent: (calls/s, low, high) of the last closed window, for a "rate vs baseline" panel."""
        return self.bands("agent", "calls")

    @property
    def late_dropped(self) -> int:
        """Calls that arrived for an already closed window (for the collector's metrics)."""
        self._flush()
        return self._late_dropped

    # ----------------------------------------------------------------- state
    def _open_state(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The open windows of ``keys`` in the snapshot form: {key: {str(window index): window dict}}."""
        opens = {k: self._open[k] for k in keys if k in self._open}
        wins = self._win.read([s for v in opens.values() for s in v.values()])
        return {k: {str(i): wins[s] for i, s in v.items()} for k, v in opens.items()}  # read() builds fresh dicts

    def _load_open(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            self._win.release(list(self._open.pop(k, {}).values()))
            opens = self._open[k] = {}
            for i, win in v.items():
                slot = opens[int(i)] = self._win.new_slot()
                self._win.load(slot, win)

    def snapshot(self) -> dict[str, Any]:
        self._flush()
        self._sync_last(forget=False)
        return {"next_open": self._next_open, "watermark": self._watermark, "late_dropped": self._late_dropped,
                "keys": json.loads(json.dumps(self._keys)), "open": self._open_state(list(self._open))}

    def restore(self, state: dict[str, Any]) -> None:
        self._bands_version += 1
        self._pending = []
        self._forget_hot()
        self._last_ok[:] = self._last_dirty[:] = False
        self._next_open = state.get("next_open")
        self._watermark = int(state.get("watermark", 0))
        self._late_dropped = int(state.get("late_dropped", 0))
        self._keys = json.loads(json.dumps(state.get("keys", {})))
        self._victims = _Victims()
        self._open, self._win = {}, OpenWindows()
        self._load_open(state.get("open", {}))

    def agents(self) -> list[str]:
        self._flush()
        return sorted({e["agent"] for e in self._keys.values() if e["scope"] != "fleet"})

    def snapshot_agent(self, agent_id: str) -> dict[str, Any] | None:
        self._flush()
        self._sync_last(forget=False)
        keys = [k for k, e in self._keys.items() if e["agent"] == agent_id]
        if not keys:
            return None
        opens = self._open_state(keys)
        return {"keys": {k: json.loads(json.dumps(self._keys[k])) for k in keys},
                "open": {k: opens.get(k, {}) for k in keys}}

    def restore_agent(self, agent_id: str, state: dict[str, Any]) -> None:
        self.drop_agent(agent_id)
        self._bands_version += 1
        for k, e in state.get("keys", {}).items():
            self._keys[k] = json.loads(json.dumps(e))
        self._victims = _Victims()  # a key already there keeps its place in the table's order
        self._load_open(state.get("open", {}))

    def drop_agent(self, agent_id: str) -> None:
        self._flush()
        self._forget_hot()
        self._sync_last()
        self._win.release([s for k in [k for k, e in self._keys.items() if e["agent"] == agent_id]
                           for s in self._drop_key(k)])
