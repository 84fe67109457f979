"""A small fixed-seed evaluation of the ML detectors, with floor values (not the benchmark
targets: those are measured by bench/detection/run.py on larger, varied traffic)."""

from __future__ import annotations

import math

import pytest

from toolwatch.detectors.iforest_detector import IsolationForestDetector
from toolwatch.detectors.sequence_detector import SequenceDetector
from toolwatch.simulate.evaluate import curve_points, format_reports, replay
from toolwatch.simulate.traffic import generate

OWNED = ("exfiltration", "sequence_hijack", "volume_spike", "tool_shadowing")


@pytest.fixture(scope="module")
def reports():
    traffic = generate(seed=2026, agents_per_archetype=2, sessions_per_agent=100, attack_rate=0.2,
                       clean_sessions=40, new_agents_per_archetype=1, new_agent_sessions=24)
    return replay([SequenceDetector(), IsolationForestDetector()], traffic)


def test_floor_recall_and_false_positive_rate(reports):
    print(format_reports(reports))
    seq, forest, both = reports["sequence"], reports["iforest"], reports["any"]
    assert seq.recall("sequence_hijack") >= 0.9
    assert seq.recall("exfiltration") >= 0.9
    assert forest.recall("volume_spike") >= 0.3
    for kind in OWNED:
        assert both.recall(kind) >= 0.8, kind
    assert seq.fpr <= 0.005 and forest.fpr <= 0.01 and both.fpr <= 0.012
    assert both.precision >= 0.6


def test_delays_are_measured(reports):
    d = reports["sequence"].median_delay_s("sequence_hijack")
    assert math.isfinite(d) and 0 <= d < 60


def test_curves_from_scores(reports):
    pts = curve_points(reports["sequence"].scores)
    assert pts["tpr"][-1] == pytest.approx(1.0) and pts["fpr"][-1] == pytest.approx(1.0)
    assert (pts["tpr"] >= 0).all() and (pts["precision"] <= 1).all()
    # Per call, each detector's scores rank the attack calls of the kinds it is for above benign calls.
    for name, kind, floor in (("sequence", "sequence_hijack", 0.9), ("sequence", "exfiltration", 0.9),
                              ("iforest", "volume_spike", 0.65), ("iforest", "exfiltration", 0.7)):
        auc = float(curve_points(reports[name].scores, kind)["auc"])
        print(name, kind, "ROC AUC per call", round(auc, 3))
        assert auc >= floor, (name, kind, auc)
