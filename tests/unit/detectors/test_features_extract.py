"""The feature list on hand-built calls with known values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from toolwatch.detectors.events import ToolCall
from toolwatch.detectors.features import FEATURE_NAMES, N_FEATURES, AgentContext, extract
from toolwatch.detectors.sessions import START, SessionTracker

S = 1_000_000_000


def col(X: np.ndarray, name: str) -> list[float]:
    return [round(float(v), 6) for v in X[:, FEATURE_NAMES.index(name)]]


def test_every_feature_on_a_hand_built_session():
    ctx = AgentContext()
    ctx.remember(["known.example"])
    calls = [
        ToolCall(time_ns=0, agent_id="a", tool="read", server="mail", session_id="s", args_bytes=99,
                 result_bytes=999, result_labels=("email", "instructions"), result_fingerprints=("fp1",)),
        ToolCall(time_ns=3 * S, agent_id="a", tool="post", server="web", session_id="s", args_bytes=0,
                 args_labels=("secret", "email"), args_fingerprints=("fp1", "fp9"),
                 destinations=("known.example", "new.example", "new.example"), error_type="tool_error"),
        ToolCall(time_ns=4 * S, agent_id="a", tool="read", server="mail", session_id="s",
                 args_fingerprints=("fp1",)),
    ]
    seen: list[tuple[str, str]] = []
    X, prevs = extract(ctx, calls, lambda p, t: seen.append((p, t)) or 1.5)
    assert X.shape == (3, N_FEATURES) == (3, len(FEATURE_NAMES))
    assert prevs == [START, "mail/read", "web/post"] and seen[1] == ("mail/read", "web/post")
    assert col(X, "surprisal") == [1.5, 1.5, 1.5]
    assert col(X, "log_args_bytes") == [round(math.log(100), 6), 0.0, 0.0]
    assert col(X, "log_result_bytes")[0] == round(math.log(1000), 6)
    assert col(X, "args_labels") == [0, 2, 0]
    assert col(X, "args_secret") == [0, 1, 0]
    assert col(X, "result_labels") == [2, 0, 0]
    assert col(X, "after_instr") == [0, 1, 0]
    assert col(X, "destinations") == [0, 2, 0]
    assert col(X, "new_dest") == [0, 1, 0]  # not remembered: the caller decides what is learned
    assert col(X, "log_gap") == [round(math.log(61), 6), round(math.log(4), 6), round(math.log(2), 6)]
    assert col(X, "log_session_len") == [round(math.log(2), 6), round(math.log(3), 6), round(math.log(4), 6)]
    assert col(X, "error_rate") == [0, 0.5, round(1 / 3, 6)]
    assert col(X, "servers") == [1, 2, 2]
    # fp1 came from mail: reused by web (another server) counts, by mail itself does not.
    assert col(X, "fp_reuse") == [0, 1, 0]
    r = col(X, "rate")
    assert r[0] == 1.0 and r[1] == pytest.approx(1 + math.exp(-3 / 10), abs=1e-6) and r[2] > r[1]


def test_sessions_are_independent_and_bounded():
    tracker = SessionTracker(max_open=2, idle_s=100)
    ctx = AgentContext(tracker)
    calls = [ToolCall(time_ns=i * S, agent_id="a", tool="t", session_id=f"s{i % 3}") for i in range(9)]
    closed: list = []
    X, prevs = extract(ctx, calls, lambda p, t: 0.0, closed)
    assert len(tracker.open) == 2 and len(closed) == 7  # three sessions round-robin through two slots
    assert prevs == [START] * 9
    later = [ToolCall(time_ns=10**4 * S, agent_id="a", tool="t", session_id="s9")]
    extract(ctx, later, lambda p, t: 0.0, closed)
    assert list(tracker.open) == ["s9"]  # idle ones expired


def test_context_round_trip():
    ctx = AgentContext(max_destinations=2)
    ctx.remember(["a", "b", "c"])
    assert list(ctx.destinations) == ["b", "c"]
    extract(ctx, [ToolCall(time_ns=5, agent_id="a", tool="t", session_id="s", result_fingerprints=("f",))],
            lambda p, t: 0.0)
    ctx2 = AgentContext()
    ctx2.load(ctx.to_dict())
    assert ctx2.to_dict() == ctx.to_dict()


def test_empty_batch():
    X, prevs = extract(AgentContext(), [], lambda p, t: 0.0)
    assert X.shape == (0, N_FEATURES) and prevs == []
