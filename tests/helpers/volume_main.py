# Frozen copy of main's detectors/volume.py (before the slot arrays): the A/B reference. Imports made absolute.
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

import json
import math
from collections import Counter
from dataclasses import dataclass
from itertools import chain, compress, count
from operator import attrgetter, itemgetter
from statistics import median
from typing import Any

import numpy as np

from toolwatch.detectors.base import Detector
from toolwatch.detectors.config_fields import load_flat, require
from toolwatch.detectors.events import Batch, Finding, ToolCall

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


SPANS_NAMED = 10
"""Spans a volume finding names (per window and kind: first, fastest, largest)."""


def _keep(top: list[list[Any]], item: list[Any]) -> None:
    """Keep the ``SPANS_NAMED`` items with the largest first element (ties: earliest stays)."""
    if len(top) < SPANS_NAMED:
        top.append(item)
        return
    # Same result as append-then-remove-the-first-minimum, without a key function per element:
    # the hot path of every call (most calls rank below the kept ten and change nothing).
    firsts = [x[0] for x in top]
    low = min(firsts)
    if item[0] < low:
        return
    del top[firsts.index(low)]
    top.append(item)


def _merge_top(top: list[list[Any]], vals: list[int], calls: list[int], spans: list[str]) -> Any:
    """``_keep`` each (value, call) of ``vals``/``calls`` in turn; returns the new minimum (None while not full).

    The batch's candidates are few (its ten best per window, in call order), so ``_keep``'s own
    rule runs on them directly, with the list's values kept alongside instead of rebuilt per item.
    """
    n, k = len(vals), 0
    while len(top) < SPANS_NAMED:
        if k == n:
            return None
        top.append([vals[k], spans[calls[k]]])
        k += 1
    firsts = [x[0] for x in top]
    low = min(firsts)
    for k in range(k, n):
        v = vals[k]
        if v >= low:
            i = firsts.index(low)
            del firsts[i], top[i]
            firsts.append(v)
            top.append([v, spans[calls[k]]])
            low = min(firsts)
    return low


def _top_rows(rows: np.ndarray, gid: np.ndarray, value: np.ndarray, pos: np.ndarray,
              n_groups: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """Per group, its ``SPANS_NAMED`` best rows by (value, call order), in call order.

    Returns (start per group and one past the last, values, calls, best value per group); group
    g's candidates are ``values[start[g]:start[g + 1]]`` with their calls.
    """
    if not len(rows):
        return [0] * (n_groups + 1), [], [], [0] * n_groups
    g, v, p = gid[rows], value[rows], pos[rows]
    order = np.lexsort((p, v, g))
    g, v, p = g[order], v[order], p[order]
    last = np.empty(len(g), bool)
    last[-1] = True
    last[:-1] = g[1:] != g[:-1]
    ends = np.flatnonzero(last)
    best = np.zeros(n_groups, np.int64)
    best[g[ends]] = v[ends]
    group_end = np.repeat(ends, np.diff(np.concatenate(([-1], ends))))
    keep = np.flatnonzero(group_end - np.arange(len(g)) < SPANS_NAMED)
    g, v, p = g[keep], v[keep], p[keep]
    order = np.lexsort((p, g))
    start = np.zeros(n_groups + 1, np.int64)
    np.cumsum(np.bincount(g, minlength=n_groups), out=start[1:])
    return start.tolist(), v[order].tolist(), p[order].tolist(), best.tolist()


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
"""Below this many calls, call by call is cheaper than setting up the columns."""
_FIRST_GAP = 10**15
"""Gap credited to a key's very first call (no earlier call to follow)."""
_TIME = attrgetter("time_ns")
_ARGS_BYTES = attrgetter("args_bytes")
_RESULT_BYTES = attrgetter("result_bytes")
_TRIPLE = attrgetter("agent_id", "server", "tool")
_SPAN = attrgetter("span_id")
_SESSION = attrgetter("session_id")
_ERROR = attrgetter("error_type")


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
        # key -> {"scope", "agent", "tool", "next", "last_active", "hist": {metric: [...]}, "last": {...}}
        self._keys: dict[str, dict[str, Any]] = {}
        # key -> {window index: {"calls", "bytes", "errors", "spans": [...], "sessions": {s: n}}}
        self._open: dict[str, dict[int, dict[str, Any]]] = {}
        self._key_cache: dict[tuple[str, str, str], list[tuple[str, str, str, str]]] = {}  # derived from config
        # key -> (window index, its open window dict): the window a key's calls went to last. Only
        # closing, eviction, drop and restore remove window dicts, and each clears this cache.
        self._hot: dict[str, tuple[int, dict[str, Any], list[Any]]] = {}  # (.., [fast low, big low])

    # ----------------------------------------------------------------- ingest
    def observe(self, batch: Batch) -> list[Finding]:
        calls = batch.calls
        if self._next_open is None:
            if not calls:
                return []
            self._next_open = min(c.time_ns for c in calls) // self._w
        if len(calls) < _MIN_BATCH or not self._add_batch(calls):
            self._add_calls(calls)
        watermark = batch.watermark_ns or max((c.time_ns for c in calls), default=0)
        self._watermark = max(self._watermark, watermark)
        return self._advance()

    def _add_calls(self, calls: list[ToolCall]) -> None:
        """Call by call: the reference the batched path must match (and its fallback)."""
        self._hot.clear()
        keys_of: dict[tuple[str, str], list[tuple[str, str, str, str]]] = {}  # per batch: few agents, many calls
        for call in calls:
            idx = call.time_ns // self._w
            if idx < self._next_open:
                self._late_dropped += 1
                continue
            pair = (call.agent_id, call.token)
            keys = keys_of.get(pair)
            if keys is None:
                keys = keys_of[pair] = self._keys_for(call)
            for key, scope, agent, tool in keys:
                self._add(key, scope, agent, tool, idx, call)

    def _keys_of(self, agent: str, server: str, tool: str) -> list[tuple[str, str, str, str]]:
        triple = (agent, server, tool)
        keys = self._key_cache.get(triple)
        if keys is None:
            if len(self._key_cache) >= 4 * self.config.max_keys:
                self._key_cache.clear()
            keys = self._key_cache[triple] = self._keys_for(ToolCall(time_ns=0, agent_id=agent, server=server, tool=tool))
        return keys

    def _add_batch(self, calls: list[ToolCall]) -> bool:
        """Add a batch per (key, window) at once, exactly as ``_add_calls`` would; False if it cannot.

        Counting is columnar (numpy over the batch's rows, one row per call and key); Python then
        runs once per (key, window) for the sums and the few calls that can still enter a window's
        named spans, and once per (key, window, session) for session counts. It declines, having
        changed nothing, when a new key would evict another (eviction mid-batch depends on the
        call order) or when times do not fit in int64.
        """
        n = len(calls)
        try:
            t = np.fromiter(map(_TIME, calls), np.int64, n)
            size = (np.maximum(np.fromiter(map(_ARGS_BYTES, calls), np.int64, n), 0)
                    + np.maximum(np.fromiter(map(_RESULT_BYTES, calls), np.int64, n), 0))
        except (OverflowError, TypeError, ValueError):
            return False
        w = t // self._w
        live = w >= self._next_open
        late = n - int(np.count_nonzero(live))
        if late == n:
            self._late_dropped += late
            return True
        if late:
            calls = list(compress(calls, live.tolist()))
            t, size, w, n = t[live], size[live], w[live], n - late

        triples = list(map(_TRIPLE, calls))
        # Keys per distinct triple (cached), numbered in order of first appearance, all at C speed.
        cache = self._key_cache
        code_of = dict(zip(dict.fromkeys(triples), count()))
        per_triple = [cache.get(x) or self._keys_of(*x) for x in code_of]
        key_at = dict(zip(dict.fromkeys(chain.from_iterable(per_triple)), count()))
        meta: list[tuple[str, str, str, str]] = list(key_at)
        scope_keys = [list(map(key_at.__getitem__, map(itemgetter(s), per_triple)))
                      for s in range(len(per_triple[0]))]
        keys = self._keys
        new_keys = sum(1 for item in meta if item[0] not in keys)
        if new_keys and len(keys) + new_keys > self.config.max_keys:
            return False
        n_keys, n_scopes = len(meta), len(scope_keys)
        tcode = np.fromiter(map(code_of.__getitem__, triples), np.int64, n)

        # One row per (call, key), scope-major: row r is call r % n under scope r // n.
        rk = np.concatenate([np.asarray(ks, np.int64)[tcode] for ks in scope_keys])
        pos = np.tile(np.arange(n, dtype=np.int64), n_scopes)
        rt, rw, rsize = np.tile(t, n_scopes), np.tile(w, n_scopes), np.tile(size, n_scopes)
        spans = list(map(_SPAN, calls))
        has_span = np.tile(np.fromiter(map(bool, spans), bool, n), n_scopes)
        errors = np.tile(np.fromiter(map(bool, map(_ERROR, calls)), bool, n), n_scopes)

        # Gap to the key's latest earlier call (its running max time), per key in call order.
        t_lo, t_span = int(t.min()), int(t.max()) - int(t.min()) + 1
        if n_keys * t_span >= 2**62:
            return False
        last = [keys[item[0]].get("last_ns") if item[0] in keys else None for item in meta]
        has_last = np.array([x is not None for x in last], bool)
        last_ns = np.array([0 if x is None else x for x in last], np.int64)
        by_key = np.lexsort((pos, rk))
        ks, ts = rk[by_key], rt[by_key]
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
        np.maximum.at(key_max, rk, rt)

        # Groups = (key, window); rows in call order inside each.
        by_group = np.lexsort((pos, rw, rk))
        gk, gw = rk[by_group], rw[by_group]
        edge = np.empty(len(gk), bool)
        edge[0] = True
        edge[1:] = (gk[1:] != gk[:-1]) | (gw[1:] != gw[:-1])
        starts = np.flatnonzero(edge)
        n_groups = len(starts)
        gid = np.empty(len(gk), np.int64)
        gid[by_group] = np.cumsum(edge) - 1
        g_calls = np.diff(np.append(starts, len(gk))).tolist()
        g_bytes = np.add.reduceat(rsize[by_group], starts).tolist()
        g_errors = np.add.reduceat(errors[by_group].astype(np.int64), starts).tolist()
        g_spans = np.add.reduceat(has_span[by_group].astype(np.int64), starts).tolist()
        scope_of = np.repeat(np.arange(n_scopes, dtype=np.int64), n)
        g_first = (pos * n_scopes + scope_of)[by_group][starts]
        g_key, g_win = gk[starts].tolist(), gw[starts].tolist()
        g_pos = pos[by_group].tolist()
        g_start = starts.tolist()

        # Candidates for the named spans: per group, the ten best of this batch by (value, call order).
        with_span = np.flatnonzero(has_span)
        fast_c = _top_rows(with_span, gid, fast, pos, n_groups)
        big_c = _top_rows(with_span, gid, rsize, pos, n_groups)

        self._late_dropped += late
        wins: list[dict[str, Any]] = [None] * n_groups  # type: ignore[list-item]
        hot = self._hot
        for g in np.argsort(g_first, kind="stable").tolist():  # creation order = order of first call
            item = meta[g_key[g]]
            idx = g_win[g]
            cached = hot.get(item[0])
            if cached is None or cached[0] != idx:
                cached = self._open_window(item, idx)
            win = cached[1]  # on a hit its entry already spans idx: nothing to create or widen
            wins[g] = win
            win["calls"] += g_calls[g]
            win["bytes"] += g_bytes[g]
            win["errors"] += g_errors[g]
            if g_spans[g]:
                named = win["spans"]
                if len(named) < SPANS_NAMED:
                    at = g_start[g]
                    for p in g_pos[at:at + g_calls[g]]:
                        if spans[p]:
                            named.append(spans[p])
                            if len(named) >= SPANS_NAMED:
                                break
                lows = cached[2]
                for m, (c_start, c_val, c_pos, c_best), name in ((0, fast_c, "fast"), (1, big_c, "big")):
                    top = win.setdefault(name, [])
                    if lows[m] is not None and c_best[g] < lows[m]:
                        continue  # nothing of this batch can enter a full list
                    a, b = c_start[g], c_start[g + 1]
                    lows[m] = _merge_top(top, c_val[a:b], c_pos[a:b], spans)
        for item, top in zip(meta, np.where(has_last, np.maximum(key_max, last_ns), key_max).tolist()):
            keys[item[0]]["last_ns"] = top
        self._count_sessions(calls, g_pos, (np.cumsum(edge) - 1).tolist(), wins)
        return True

    def _open_window(self, item: tuple[str, str, str, str], idx: int) -> tuple[int, dict[str, Any], list[Any]]:
        """The key's entry (made if new, widened to ``idx``) and its window ``idx`` (made if new)."""
        key, scope, agent, tool = item
        keys = self._keys
        entry = keys.get(key)
        if entry is None:
            entry = keys[key] = {"scope": scope, "agent": agent, "tool": tool, "next": idx, "last_active": idx,
                                 "hist": {m: [] for m in _METRICS}, "last": None}
        if idx < entry["next"]:
            entry["next"] = idx
        if idx > entry["last_active"]:
            entry["last_active"] = idx
        opens = self._open.get(key)
        if opens is None:
            opens = self._open[key] = {}
        win = opens.get(idx)
        if win is None:
            win = opens[idx] = {"calls": 0, "bytes": 0, "errors": 0, "spans": [], "sessions": {}}
        hot = self._hot[key] = (idx, win, [None, None])
        return hot

    @staticmethod
    def _count_sessions(calls: list[ToolCall], g_pos: list[int], row_group: list[int],
                        wins: list[dict[str, Any]]) -> None:
        """Per window: count its first 20 sessions (in order of first call), as call by call would.

        ``g_pos``/``row_group`` are the rows' calls and groups in group order, calls in order inside
        a group, so one C-speed ``Counter`` over (group, session) yields each group's sessions in
        order of first call; Python then runs once per distinct (window, session).
        """
        sessions = list(map(_SESSION, calls))
        if not any(sessions):
            return
        counts = Counter(zip(row_group, map(sessions.__getitem__, g_pos)))
        for (g, sid), n in counts.items():
            if sid:
                seen = wins[g]["sessions"]
                if sid in seen:
                    seen[sid] += n
                elif len(seen) < 20:
                    seen[sid] = n

    def _keys_for(self, call: ToolCall) -> list[tuple[str, str, str, str]]:
        keys = [(json.dumps(["agent", call.agent_id]), "agent", call.agent_id, "")]
        if self.config.per_tool:
            keys.append((json.dumps(["agent_tool", call.agent_id, call.token]), "agent_tool", call.agent_id, call.token))
        if self.config.fleet:
            keys.append((json.dumps(["fleet"]), "fleet", FLEET, ""))
        return keys

    def _add(self, key: str, scope: str, agent: str, tool: str, idx: int, call: ToolCall) -> None:
        entry = self._keys.get(key)
        if entry is None:
            self._evict_if_full()
            entry = self._keys[key] = {"scope": scope, "agent": agent, "tool": tool, "next": idx, "last_active": idx,
                                       "hist": {m: [] for m in _METRICS}, "last": None}
        entry["next"] = min(entry["next"], idx)
        entry["last_active"] = max(entry["last_active"], idx)
        win = self._open.setdefault(key, {}).setdefault(idx, {"calls": 0, "bytes": 0, "errors": 0, "spans": [],
                                                              "sessions": {}})
        win["calls"] += 1
        win["bytes"] += max(0, call.args_bytes) + max(0, call.result_bytes)
        win["errors"] += 1 if call.is_error else 0
        if call.span_id and len(win["spans"]) < 10:
            win["spans"].append(call.span_id)
        gap = call.time_ns - entry.get("last_ns", call.time_ns - _FIRST_GAP)
        entry["last_ns"] = max(entry.get("last_ns", call.time_ns), call.time_ns)
        if call.span_id:
            # The calls that make a spike: the fastest-following and the largest. A finding names
            # these rather than the window's first calls, which are often the session's ordinary ones.
            _keep(win.setdefault("fast", []), [-abs(gap), call.span_id])
            _keep(win.setdefault("big", []), [max(0, call.args_bytes) + max(0, call.result_bytes), call.span_id])
        if call.session_id and (call.session_id in win["sessions"] or len(win["sessions"]) < 20):
            win["sessions"][call.session_id] = win["sessions"].get(call.session_id, 0) + 1

    def _evict_if_full(self) -> None:
        if len(self._keys) < self.config.max_keys:
            return
        victim = min((k for k, e in self._keys.items() if e["scope"] != "fleet"),
                     key=lambda k: self._keys[k]["last_active"])
        self._keys.pop(victim)
        self._open.pop(victim, None)

    # ----------------------------------------------------------------- close windows
    def _advance(self) -> list[Finding]:
        assert self._next_open is not None
        upto = (self._watermark - self._lateness) // self._w
        if upto <= self._next_open:
            return []
        findings: list[Finding] = []
        self._hot.clear()
        for key in list(self._keys):
            entry = self._keys[key]
            if entry["last_active"] < upto - self.config.idle_windows:
                self._keys.pop(key)
                self._open.pop(key, None)
                continue
            findings.extend(self._close_key(key, entry, upto))
        self._next_open = upto
        return findings

    def _close_key(self, key: str, entry: dict[str, Any], upto: int) -> list[Finding]:
        opens = self._open.get(key, {})
        findings: list[Finding] = []
        cur = entry["next"]
        for idx in sorted(i for i in opens if i < upto) + [upto]:
            for _ in range(min(idx - cur, self.config.history_windows)):
                self._learn(entry, "calls", 0.0)
                self._learn(entry, "bytes", 0.0)
            if idx == upto:
                break
            findings.extend(self._judge(entry, idx, opens.pop(idx)))
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
        """Last closed window per key: (value per second for counts, else value; low; high). NaN band in warm-up."""
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
        return self._late_dropped

    # ----------------------------------------------------------------- state
    def snapshot(self) -> dict[str, Any]:
        return {"next_open": self._next_open, "watermark": self._watermark, "late_dropped": self._late_dropped,
                "keys": json.loads(json.dumps(self._keys)),
                "open": {k: {str(i): json.loads(json.dumps(w)) for i, w in v.items()} for k, v in self._open.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        self._hot.clear()
        self._next_open = state.get("next_open")
        self._watermark = int(state.get("watermark", 0))
        self._late_dropped = int(state.get("late_dropped", 0))
        self._keys = json.loads(json.dumps(state.get("keys", {})))
        self._open = {k: {int(i): dict(w) for i, w in v.items()} for k, v in state.get("open", {}).items()}

    def agents(self) -> list[str]:
        return sorted({e["agent"] for e in self._keys.values() if e["scope"] != "fleet"})

    def snapshot_agent(self, agent_id: str) -> dict[str, Any] | None:
        keys = [k for k, e in self._keys.items() if e["agent"] == agent_id]
        if not keys:
            return None
        return {"keys": {k: json.loads(json.dumps(self._keys[k])) for k in keys},
                "open": {k: {str(i): json.loads(json.dumps(w)) for i, w in self._open.get(k, {}).items()} for k in keys}}

    def restore_agent(self, agent_id: str, state: dict[str, Any]) -> None:
        self._hot.clear()
        self.drop_agent(agent_id)
        for k, e in state.get("keys", {}).items():
            self._keys[k] = json.loads(json.dumps(e))
        for k, v in state.get("open", {}).items():
            self._open[k] = {int(i): dict(w) for i, w in v.items()}

    def drop_agent(self, agent_id: str) -> None:
        self._hot.clear()
        for k in [k for k, e in self._keys.items() if e["agent"] == agent_id]:
            self._keys.pop(k)
            self._open.pop(k, None)
