# Frozen copy of main's detectors/features.py (5d232be, before the batch-level feature pass): the A/B reference of test_iforest_observe_ab. Imports made absolute.
"""The one documented feature list for per-call anomaly models, computed over a micro-batch.

Each row describes one call in the context of its session and its agent's history. Columns
(``FEATURE_NAMES``, in order):

==================== ==========================================================================
``surprisal``        bits of surprise of ``server/tool`` after the previous call (sequence model)
``log_args_bytes``   ``log1p`` of argument size before redaction
``log_result_bytes`` ``log1p`` of result size before redaction
``args_labels``      number of sensitive-data labels in the arguments (from redaction)
``args_secret``      1 when the arguments carry a ``secret``/``card``/``high_entropy`` label
``result_labels``    number of sensitive-data labels in the result
``after_instr``      1 when the previous call's result addressed the model (``instructions``)
``destinations``     number of distinct destinations named in the arguments
``new_dest``         of those, how many this agent never named before
``log_gap``          ``log1p`` seconds since the previous call of the session (first call: 60 s)
``rate``             recent calls in the session (decayed count, time constant 10 s)
``log_session_len``  ``log1p`` of the call's position in its session
``error_rate``       share of the session's calls so far that failed (this one included)
``servers``          distinct servers used in the session so far (fan-out)
``fp_reuse``         argument fingerprints that an earlier result from *another* server returned
==================== ==========================================================================

The stateful part (session context, known destinations) is a short Python pass per call; the
numeric transforms are NumPy over the whole batch. Memory per agent: the session tracker's bound
plus at most ``max_destinations`` remembered destinations.
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np

from toolwatch.detectors.events import ToolCall
from toolwatch.detectors.sequence import MarkovModel
from toolwatch.detectors.sessions import START, Session, SessionTracker

__all__ = ["FEATURE_NAMES", "N_FEATURES", "AgentContext", "append_rows", "extract", "finish"]

FEATURE_NAMES: tuple[str, ...] = (
    "surprisal",
    "log_args_bytes",
    "log_result_bytes",
    "args_labels",
    "args_secret",
    "result_labels",
    "after_instr",
    "destinations",
    "new_dest",
    "log_gap",
    "rate",
    "log_session_len",
    "error_rate",
    "servers",
    "fp_reuse",
)
N_FEATURES = len(FEATURE_NAMES)
_SECRET_LABELS = frozenset({"secret", "card", "high_entropy"})
_FIRST_GAP_S = 60.0
_LOG_COLS = [1, 2, 9, 11]


class AgentContext:
    """One agent's context for features: open sessions and destinations seen before."""

    def __init__(self, tracker: SessionTracker | None = None, max_destinations: int = 1024) -> None:
        self.sessions = tracker or SessionTracker()
        self.max_destinations = max_destinations
        self.destinations: OrderedDict[str, None] = OrderedDict()

    def remember(self, dests: Sequence[str]) -> None:
        """Add destinations to what the agent is known to use (call for unflagged calls only)."""
        for d in dests:
            self.destinations[d] = None
            self.destinations.move_to_end(d)
            if len(self.destinations) > self.max_destinations:
                self.destinations.popitem(last=False)

    def to_dict(self) -> dict[str, Any]:
        return {"sessions": self.sessions.to_dict(), "destinations": list(self.destinations)}

    def load(self, d: dict[str, Any]) -> None:
        self.sessions.load(d.get("sessions", {}))
        self.destinations = OrderedDict((str(x), None) for x in d.get("destinations", []))


def extract(ctx: AgentContext, calls: Sequence[ToolCall], surprise: Callable[[str, str], float],
            closed: list[tuple[str, Session]] | None = None) -> tuple[np.ndarray, list[str]]:
    """Feature rows (``len(calls) x N_FEATURES``) for one agent's calls in time order, and the
    token before each call (``START`` for a session's first call). Sessions that close on the
    way are appended to ``closed`` when given.

    ``surprise(prev, token)`` is the sequence model's surprisal in bits. This advances each
    session's context past the call; it learns no baseline (that is the caller's decision, made
    after scoring, so that anomalous calls stay out of the baseline).
    """
    rows: list[float] = []
    prevs: list[str] = []
    append_rows(ctx, calls, rows, prevs, [], closed if closed is not None else [], surprise=surprise, flat=True)
    return finish(rows), prevs


def finish(rows: list[float] | list[tuple[float, ...]]) -> np.ndarray:
    """Raw rows from ``append_rows`` (any number of agents; flat or as tuples) as the feature
    matrix: one NumPy pass.

    Flat rows are packed as C doubles by ``struct`` (each number through ``PyFloat_AsDouble``:
    the same double NumPy makes of a Python float or int, correctly rounded) in about two thirds
    of ``np.array``'s time on a list of numbers, which checks every element's type and shape
    first. Anything ``struct`` refuses takes ``np.array``'s path, which decides as before."""
    raw = None
    if rows and not isinstance(rows[0], tuple):
        raw = np.empty(len(rows), dtype=np.float64)
        try:
            struct.pack_into(f"{len(rows)}d", raw, 0, *rows)
        except (TypeError, struct.error):
            raw = None
    if raw is None:
        raw = np.array(rows, dtype=np.float64)
    raw = raw.reshape(-1, N_FEATURES)
    raw[:, _LOG_COLS] = np.log1p(np.maximum(raw[:, _LOG_COLS], 0.0))
    return raw


def append_rows(ctx: AgentContext, calls: Sequence[ToolCall], rows: list[Any], prevs: list[str],
                tokens: list[str], closed: list[tuple[str, Session]], model: MarkovModel | None = None,
                prior: MarkovModel | None = None, surprise: Callable[[str, str], float] | None = None,
                prior_probs: dict[tuple[str, str], tuple[float, float]] | None = None, flat: bool = False,
                call_tokens: Sequence[str] | None = None) -> None:
    """The per-call pass of ``extract`` for one agent's calls, appending raw rows (before the log
    transform of ``finish``), previous tokens, tokens and closed sessions to the given lists, so a
    detector builds one matrix per micro-batch. A row is a tuple, or with ``flat`` its
    ``N_FEATURES`` values appended to ``rows`` one by one (NumPy converts a flat list of numbers in
    less than half the time of a list of tuples). ``call_tokens`` are the calls' tokens
    (``ToolCall.token``) when the caller has them already.

    Surprisal is ``surprise(prev, token)`` when given, else ``model.surprisal(prev, token, prior)``,
    inlined (this runs per span) with the same operations in the same order. With a prior, the
    prior's own probabilities (``p_unigram(token)``, ``prob(prev, token)``) are memoised in
    ``prior_probs`` when given: agents that share a prior in a batch share it (pass one dict per
    prior, used only while the prior does not change)."""
    tracker = ctx.sessions
    opened = tracker.open
    idle_ns = tracker.idle_ns
    max_open = tracker.max_open
    rate_window_s = tracker.rate_window_s
    max_servers = tracker.max_servers
    known = ctx.destinations
    secret = _SECRET_LABELS
    exp = math.exp
    log2 = math.log2
    inline = surprise is None
    if inline:
        assert model is not None, "append_rows needs a sequence model or a surprise function"
        uni, bi, out = model.uni, model.bi, model.out
        alpha, beta = model.config.alpha, model.config.beta
        p1_base = beta * (1.0 / (len(uni) + 1))
        p1_den = model.mass + beta
        if prior is not None and prior.mass <= 0:
            prior = None  # MarkovModel.prob ignores a prior without mass
        if prior is not None:
            w = model.config.prior_weight
            memo = {} if prior_probs is None else prior_probs
            p_uni, p_prob = prior.p_unigram, prior.prob
    put = rows.extend if flat else rows.append
    if call_tokens is None:
        call_tokens = [c.token for c in calls]
    tokens.extend(call_tokens)
    for c, token in zip(calls, call_tokens):
        # SessionTracker.touch, inlined.
        t = c.time_ns
        sid = c.session_id
        if opened and t - tracker.floor_ns > idle_ns:
            closed.extend(tracker.expire(t))
        s = opened.get(sid)
        if s is None:
            s = opened[sid] = Session(START, 0, t, t, 0, 0.0, False, False, [], {})
            if t < tracker.floor_ns:
                tracker.floor_ns = t
            while len(opened) > max_open:
                closed.append(opened.popitem(False))
        else:
            opened.move_to_end(sid)
        server = c.server
        prev = s.prev
        prevs.append(prev)
        if inline:
            row = bi.get(prev)
            if prior is None:
                # MarkovModel.prob without a prior (same operations, same rounding).
                bits = -log2(((row.get(token, 0.0) if row else 0.0)
                              + alpha * ((uni.get(token, 0.0) + p1_base) / p1_den))
                             / (out.get(prev, 0.0) + alpha))
            else:
                # MarkovModel.prob with a prior: P1 on the prior's unigram, plus w times its P2.
                pq = memo.get((prev, token))
                if pq is None:
                    pq = memo[(prev, token)] = (p_uni(token), p_prob(prev, token))
                bits = -log2(((row.get(token, 0.0) if row else 0.0) + w * pq[1]
                              + alpha * ((uni.get(token, 0.0) + beta * pq[0]) / p1_den))
                             / (out.get(prev, 0.0) + w + alpha))
        else:
            bits = surprise(prev, token)  # type: ignore[misc]
        dests = c.destinations
        if dests:
            dests = set(dests)
            new_dest = sum(1 for d in dests if d not in known)
        else:
            new_dest = 0
        n_in = s.n
        last = s.last_ns
        after = 1.0 if s.prev_instructions else 0.0
        reuse = 0
        if c.args_fingerprints:
            fps = s.result_fps
            reuse = sum(1 for fp in c.args_fingerprints if fps.get(fp, server) != server)
        # SessionTracker.advance, inlined.
        if n_in:
            gap = (t - last) / 1e9
            d_ns = t - last
            s.rate = s.rate * exp(-(d_ns if d_ns > 0 else 0) / 1e9 / rate_window_s) + 1.0
        else:
            gap = _FIRST_GAP_S
            s.rate = s.rate * 0.0 + 1.0
        s.prev = token
        n = s.n = n_in + 1
        if t > last:
            s.last_ns = t
        if c.error_type:
            s.errors += 1
        res_labels = c.result_labels
        s.prev_instructions = c.result_injection_score >= 0.5 or (bool(res_labels) and "instructions" in res_labels)
        servers = s.servers
        if server not in servers and len(servers) < max_servers:
            servers.append(server)
        if c.result_fingerprints:
            tracker.remember_fps(s, c.result_fingerprints, server)
        labels = c.args_labels
        put((
            bits, c.args_bytes, c.result_bytes, len(labels),
            0.0 if not labels or secret.isdisjoint(labels) else 1.0,  # no set built, unlike intersection
            len(res_labels), after, len(dests), new_dest, gap, s.rate, n, s.errors / n,
            len(servers), reuse,
        ))
