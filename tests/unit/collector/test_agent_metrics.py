"""Per-agent metrics: counts, the decaying anomaly score, rate bands, and the agent cap."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from toolwatch.collector.agent_metrics import AgentMetrics
from toolwatch.detectors.events import Batch, Finding, ToolCall
from toolwatch.detectors.volume import VolumeConfig, VolumeSpikeDetector


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Bands:
    def __init__(self, bands):
        self.bands = bands

    def rate_bands(self):
        return self.bands


def _f(agent: str, score: float, detector: str = "volume", severity: str = "high") -> Finding:
    return Finding(detector=detector, severity=severity, agent_id=agent, reason="r", time_ns=1, score=score)


def _get(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_findings_counted_per_agent_detector_severity_and_scores_bucketed():
    reg = CollectorRegistry()
    m = AgentMetrics(reg, clock=Clock())
    m.after_batch(Batch(), [_f("a", 6.0), _f("a", 7.0), _f("b", 0.5, "new_tool", "medium")])
    assert _get(reg, "toolwatch_agent_findings_total", agent="a", detector="volume", severity="high") == 2
    assert _get(reg, "toolwatch_agent_findings_total", agent="b", detector="new_tool", severity="medium") == 1
    assert _get(reg, "toolwatch_agent_finding_score_bucket", agent="a", le="5.0") == 0
    assert _get(reg, "toolwatch_agent_finding_score_bucket", agent="a", le="10.0") == 2
    assert _get(reg, "toolwatch_agent_anomaly_score", agent="a") == 7.0
    assert _get(reg, "toolwatch_agent_anomaly_score", agent="b") == 0.5


def test_anomaly_score_is_the_max_within_the_window_then_decays_and_disappears():
    reg, clock = CollectorRegistry(), Clock()
    m = AgentMetrics(reg, score_window_s=100, clock=clock)
    m.observe_findings([_f("a", 9.0)])
    clock.t += 50
    m.observe_findings([_f("a", 2.0)])
    assert _get(reg, "toolwatch_agent_anomaly_score", agent="a") == 9.0
    clock.t += 60  # the 9.0 is now older than the window; the 2.0 is not
    assert _get(reg, "toolwatch_agent_anomaly_score", agent="a") == 2.0
    clock.t += 100
    assert _get(reg, "toolwatch_agent_anomaly_score", agent="a") == 0.0  # reported at 0 once
    assert _get(reg, "toolwatch_agent_anomaly_score", agent="a") is None  # then gone


def test_rate_band_exported_without_fleet_and_without_band_while_learning():
    reg = CollectorRegistry()
    m = AgentMetrics(reg, [object(), Bands({"a": (2.0, 1.0, 3.0), "new": (1.0, math.nan, math.nan),
                                            "*": (9.0, 1.0, 10.0)})], clock=Clock())
    m.after_batch(Batch(), [])
    assert _get(reg, "toolwatch_agent_calls_per_second", agent="a") == 2.0
    assert _get(reg, "toolwatch_agent_calls_per_second_band", agent="a", bound="low") == 1.0
    assert _get(reg, "toolwatch_agent_calls_per_second_band", agent="a", bound="high") == 3.0
    assert _get(reg, "toolwatch_agent_calls_per_second", agent="new") == 1.0
    assert _get(reg, "toolwatch_agent_calls_per_second_band", agent="new", bound="high") is None
    assert _get(reg, "toolwatch_agent_calls_per_second", agent="*") is None


def test_bands_follow_the_real_volume_detector():
    det = VolumeSpikeDetector(VolumeConfig(window_s=1, history_windows=3, min_history=3))
    reg = CollectorRegistry()
    m = AgentMetrics(reg, [det], clock=Clock())
    w = 1_000_000_000
    for k in range(6):
        batch = Batch(calls=[ToolCall(time_ns=k * w + i, agent_id="a", tool="t") for i in range(3)])
        batch.watermark_ns = k * w + 2
        m.after_batch(batch, det.observe(batch))
    value, low, high = det.rate_bands()["a"]
    assert _get(reg, "toolwatch_agent_calls_per_second", agent="a") == value == 3.0
    assert _get(reg, "toolwatch_agent_calls_per_second_band", agent="a", bound="high") == high > value


def test_agents_past_the_cap_fold_into_other_and_get_no_readouts():
    reg = CollectorRegistry()
    m = AgentMetrics(reg, [Bands({"a": (1.0, 0.0, 2.0), "b": (1.0, 0.0, 2.0)})], agent_cap=1, clock=Clock())
    m.after_batch(Batch(), [_f("a", 1.0), _f("b", 3.0), _f("c", 4.0)])
    assert _get(reg, "toolwatch_agent_findings_total", agent="other", detector="volume", severity="high") == 2
    assert _get(reg, "toolwatch_agent_anomaly_score", agent="other") is None
    assert _get(reg, "toolwatch_agent_calls_per_second", agent="b") is None
    assert _get(reg, "toolwatch_agent_calls_per_second", agent="a") == 1.0


def test_exposition_lists_every_family_even_before_any_finding():
    reg = CollectorRegistry()
    AgentMetrics(reg)
    text = generate_latest(reg).decode()
    for name in ("toolwatch_agent_findings_total", "toolwatch_agent_finding_score", "toolwatch_agent_anomaly_score",
                 "toolwatch_agent_calls_per_second", "toolwatch_agent_calls_per_second_band"):
        assert f"# TYPE {name} " in text


def test_bad_settings_are_refused_with_the_setting_named():
    with pytest.raises(ValueError, match="agent_cap"):
        AgentMetrics(CollectorRegistry(), agent_cap=0)
    with pytest.raises(ValueError, match="score_window_s"):
        AgentMetrics(CollectorRegistry(), score_window_s=0)
