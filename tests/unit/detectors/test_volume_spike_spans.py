"""Volume: a spike names the calls that make it (fastest / largest), and a bytes spike needs a
minimum number of calls, and half the scope's min_calls (one huge result is the payload checks'
business)."""

from __future__ import annotations

from typing import Any

import pytest

from toolwatch.detectors.config_fields import ConfigError
from toolwatch.detectors.events import Batch, Finding, ToolCall
from toolwatch.detectors.volume import VolumeConfig, VolumeSpikeDetector

W = 60_000_000_000  # one window, ns


def c(t_s: float, span: str, result_bytes: int = 100, agent: str = "a1") -> ToolCall:
    return ToolCall(time_ns=int(t_s * 1e9), agent_id=agent, tool="search", server="kb", session_id="s",
                    span_id=span, result_bytes=result_bytes)


def run(det: VolumeSpikeDetector, calls: list[ToolCall], close_at_s: float) -> list[Finding]:
    out = det.observe(Batch(calls=calls, watermark_ns=max(x.time_ns for x in calls)))
    out += det.observe(Batch(calls=[], watermark_ns=int(close_at_s * 1e9)))
    return out


def quiet_history(det: VolumeSpikeDetector, windows: int = 6) -> None:
    """A few windows with 2 slow calls each, so bands exist."""
    for w in range(windows):
        run(det, [c(w * 60 + 1, f"h{w}a"), c(w * 60 + 30, f"h{w}b")], (w + 1) * 60)


def test_calls_spike_names_the_burst_not_the_sessions_ordinary_calls_before_it() -> None:
    det = VolumeSpikeDetector(VolumeConfig(per_tool=False, fleet=False, min_calls_agent=10))
    quiet_history(det)
    base = 6 * 60
    ordinary = [c(base + 1 + 3 * i, f"ord{i}") for i in range(8)]  # every 3 s from the window start
    burst = [c(base + 30 + 0.1 * i, f"burst{i}") for i in range(40)]
    found = [f for f in run(det, ordinary + burst, base + 120) if f.evidence["metric"] == "calls"]
    assert len(found) == 1
    spans = found[0].span_ids
    assert len(spans) == 10 and all(s.startswith("burst") for s in spans)


def test_bytes_spike_names_the_largest_calls() -> None:
    det = VolumeSpikeDetector(VolumeConfig(per_tool=False, fleet=False, min_calls_agent=20, min_calls_bytes=10))
    quiet_history(det)
    base = 6 * 60
    calls = [c(base + 1 + 2 * i, f"small{i}") for i in range(12)] + [c(base + 40, "huge", result_bytes=5_000_000)]
    [f] = [f for f in run(det, calls, base + 120) if f.evidence["metric"] == "bytes"]
    assert f.span_ids[0] == "huge"


def test_bytes_spike_needs_min_calls_bytes_calls() -> None:
    def bytes_findings(n_calls: int, min_calls_agent: int = 20) -> list[Finding]:
        det = VolumeSpikeDetector(VolumeConfig(per_tool=False, fleet=False, min_calls_bytes=10,
                                               min_calls_agent=min_calls_agent))
        quiet_history(det)
        base = 6 * 60
        calls = [c(base + 1 + i, f"b{i}", result_bytes=500_000) for i in range(n_calls)]
        return [f for f in run(det, calls, base + 120) if f.evidence["metric"] == "bytes"]

    assert bytes_findings(9) == []  # 4.5 MB in 9 calls: below the call floor (near miss)
    assert len(bytes_findings(10)) == 1
    # and at least half the scope's min_calls (here 15 of 30): the fleet needs 25 by default
    assert bytes_findings(14, min_calls_agent=30) == []
    assert len(bytes_findings(15, min_calls_agent=30)) == 1


def test_min_calls_bytes_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="min_calls_bytes"):
        VolumeConfig(min_calls_bytes=-1).validate()
