"""Checks every Detector should pass (river's ``checks/common.py`` idea), as plain functions.

Each check takes a zero-argument factory that builds a fresh detector, so any engineer's detector
can be run through the same suite: ``check_all(lambda: MyDetector(MyConfig()))``.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

from toolwatch.detectors.base import Detector
from toolwatch.detectors.events import Batch, Finding, ToolCall

Factory = Callable[[], Detector]
S = 1_000_000_000
T0 = 1_780_000_000 * S
TOKENS = ("fs/list_dir", "fs/read_file", "fs/write_file", "shell/run_tests", "git/commit")


def session_calls(agent: str, session: str, tokens: list[str], start_ns: int, gap_s: float = 2.0,
                  **extra: Any) -> list[ToolCall]:
    """Calls for one session, ``gap_s`` apart, fields filled like a real toolwatch span."""
    out = []
    for i, tok in enumerate(tokens):
        server, tool = tok.split("/", 1)
        out.append(ToolCall(
            time_ns=start_ns + int(i * gap_s * S), agent_id=agent, tool=tool, server=server,
            session_id=session, span_id=f"{session}-{i}", trace_id=session,
            args_bytes=200 + 10 * (i % 3), result_bytes=1000 + 100 * (i % 5), **extra))
    return out


def routine_traffic(agent: str, n_sessions: int, start_ns: int = T0, session_gap_s: float = 600.0,
                    seed: int = 0) -> list[ToolCall]:
    """A habit: list -> read (1-3x) -> write -> test, with a commit every third session."""
    rng = np.random.default_rng(seed)
    calls: list[ToolCall] = []
    for k in range(n_sessions):
        toks = ["fs/list_dir"] + ["fs/read_file"] * int(rng.integers(1, 4)) + ["fs/write_file", "shell/run_tests"]
        if k % 3 == 2:
            toks.append("git/commit")
        calls += session_calls(agent, f"{agent}-s{k}", toks, start_ns + int(k * session_gap_s * S))
    return calls


def feed(det: Detector, calls: list[ToolCall], size: int = 64) -> list[Finding]:
    found: list[Finding] = []
    for i in range(0, len(calls), size):
        chunk = calls[i : i + size]
        found += det.observe(Batch(calls=chunk, watermark_ns=chunk[-1].time_ns))
    return found


def check_score_before_learning(make: Factory) -> None:
    """A fresh detector accepts a batch without error and flags nothing it has no basis for."""
    det = make()
    calls = session_calls("fresh", "fresh-s0", list(TOKENS), T0)
    found = det.observe(Batch(calls=calls, watermark_ns=calls[-1].time_ns))
    assert found == [], [f.reason for f in found]
    assert det.observe(Batch()) == []


def check_unseen_tools(make: Factory, train_sessions: int = 60) -> list[Finding]:
    """After a routine, a never-seen tool is handled (and returned findings are well formed)."""
    det = make()
    feed(det, routine_traffic("a", train_sessions))
    odd = session_calls("a", "a-odd", ["fs/list_dir", "evil/exfiltrate", "zzz/" + "x" * 300], T0 + 10**6 * S)
    found = det.observe(Batch(calls=odd, watermark_ns=odd[-1].time_ns))
    for f in found:
        assert isinstance(f, Finding) and f.agent_id == "a"
        json.dumps(f.to_dict())  # JSON-safe evidence
    return found


def check_missing_attributes(make: Factory) -> None:
    """Empty strings and zeros everywhere (a bare span) never crash a detector."""
    det = make()
    bare = [ToolCall(time_ns=0, agent_id="", tool="") for _ in range(5)]
    bare += [ToolCall(time_ns=T0 + i, agent_id="x", tool="t", server="", session_id="") for i in range(200)]
    for f in feed(det, bare, size=64):
        json.dumps(f.to_dict())


def _margins(det: Detector, batch: Batch) -> tuple[list[dict[str, Any]], list[float]]:
    if hasattr(det, "observe_scored"):
        found, m = det.observe_scored(batch)
        return [f.to_dict() for f in found], [float(x) for x in np.nan_to_num(m, nan=-1e9)]
    return [f.to_dict() for f in det.observe(batch)], []


def check_snapshot_restore_identical(make: Factory, train_sessions: int = 60) -> None:
    """``restore(snapshot())`` through JSON text gives the same findings and scores afterwards."""
    a = make()
    feed(a, routine_traffic("a", train_sessions) + routine_traffic("b", train_sessions // 2, seed=1))
    text = json.dumps(a.snapshot())
    b = make()
    b.restore(json.loads(text))
    probe = routine_traffic("a", 6, start_ns=T0 + 10**6 * S, seed=2)
    probe += session_calls("a", "a-odd", ["fs/list_dir", "evil/exfiltrate", "fs/read_file"], T0 + 10**7 * S)
    probe += routine_traffic("new", 3, start_ns=T0 + 10**8 * S)
    batch = Batch(calls=probe, watermark_ns=probe[-1].time_ns)
    assert _margins(a, batch) == _margins(b, batch)
    assert json.dumps(a.snapshot(), sort_keys=True) == json.dumps(b.snapshot(), sort_keys=True)


def check_per_agent_move(make: Factory, train_sessions: int = 40) -> None:
    """An agent's state moved to another detector (scale-out) scores the same there."""
    a = make()
    feed(a, routine_traffic("a", train_sessions))
    state = a.snapshot_agent("a")
    assert state is not None
    b = make()
    b.restore_agent("a", json.loads(json.dumps(state)))
    assert "a" in b.agents()
    probe = session_calls("a", "a-p", ["fs/list_dir", "git/commit", "fs/read_file"], T0 + 10**6 * S)
    batch = Batch(calls=probe, watermark_ns=probe[-1].time_ns)
    assert _margins(a, batch) == _margins(b, batch)
    b.drop_agent("a")
    assert "a" not in b.agents()


def check_bounded_memory(make: Factory, n: int = 1500) -> tuple[int, int]:
    """Per-agent state stops growing: sizes after n and 2n calls of ever-new tools, sessions and
    destinations differ by little. Returns both sizes (bytes of JSON)."""
    det = make()

    def wild(lo: int, hi: int) -> list[ToolCall]:
        return [ToolCall(time_ns=T0 + i * S, agent_id="w", tool=f"t{i}", server=f"s{i % 97}",
                         session_id=f"w-s{i // 3}", span_id=f"w{i}", destinations=(f"d{i}.example",),
                         result_fingerprints=(f"{i:016x}",), args_fingerprints=(f"{i - 1:016x}",))
                for i in range(lo, hi)]

    feed(det, wild(0, n))
    first = len(json.dumps(det.snapshot_agent("w")))
    feed(det, wild(n, 2 * n))
    second = len(json.dumps(det.snapshot_agent("w")))
    assert second <= first * 1.25 + 2048, (first, second)
    return first, second


def check_all(make: Factory) -> None:
    """Every check above, for a detector whose agents learn from routine ``fs``/``git`` traffic."""
    check_score_before_learning(make)
    check_unseen_tools(make)
    check_missing_attributes(make)
    check_snapshot_restore_identical(make)
    check_per_agent_move(make)
    check_bounded_memory(make)
