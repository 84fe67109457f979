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

from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np

from .events import ToolCall
from .sessions import Session, SessionTracker

__all__ = ["FEATURE_NAMES", "N_FEATURES", "AgentContext", "extract"]

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
    rows: list[tuple[float, ...]] = []
    prevs: list[str] = []
    tracker = ctx.sessions
    known = ctx.destinations
    secret = _SECRET_LABELS
    for c in calls:
        s, done = tracker.get(c.session_id, c.time_ns)
        if done and closed is not None:
            closed.extend(done)
        token = c.token
        prev = s.prev
        prevs.append(prev)
        bits = surprise(prev, token)
        dests = set(c.destinations)
        new_dest = sum(1 for d in dests if d not in known) if dests else 0
        gap = (c.time_ns - s.last_ns) / 1e9 if s.n else _FIRST_GAP_S
        after = 1.0 if s.prev_instructions else 0.0
        reuse = 0
        if c.args_fingerprints:
            fps = s.result_fps
            reuse = sum(1 for fp in c.args_fingerprints if fps.get(fp, c.server) != c.server)
        tracker.advance(s, token, c.server, c.time_ns, c.is_error, c.result_labels,
                        c.result_fingerprints, c.result_injection_score)
        rows.append((
            bits, c.args_bytes, c.result_bytes, len(c.args_labels),
            1.0 if c.args_labels and secret.intersection(c.args_labels) else 0.0,
            len(c.result_labels), after, len(dests), new_dest, gap, s.rate, s.n, s.errors / s.n,
            len(s.servers), reuse,
        ))
    raw = np.array(rows, dtype=np.float64).reshape(len(rows), N_FEATURES)
    raw[:, _LOG_COLS] = np.log1p(np.maximum(raw[:, _LOG_COLS], 0.0))
    return raw, prevs
