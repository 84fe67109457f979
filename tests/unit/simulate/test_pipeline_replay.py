"""pipeline_replay: labelled traffic through the collector's real Pipeline, scored like replay."""

from __future__ import annotations

import pytest

from toolwatch.detectors.events import Finding
from toolwatch.detectors.new_tool import NewToolConfig, NewToolDetector
from toolwatch.detectors.rugpull import RugPullDetector
from toolwatch.simulate.evaluate import replay, score
from toolwatch.simulate.pipeline_replay import pipeline_replay
from toolwatch.simulate.traffic import generate


@pytest.fixture(scope="module")
def traffic():
    return generate(seed=5, agents_per_archetype=1, sessions_per_agent=40, clean_sessions=20)


def test_same_flags_as_direct_replay_for_batch_independent_detectors(traffic) -> None:
    direct = replay([NewToolDetector(), RugPullDetector()], traffic)
    piped = pipeline_replay(traffic, [NewToolDetector(), RugPullDetector()], min_severity="info")
    for name in ("new_tool", "rugpull", "any"):
        assert piped[name].flagged == direct[name].flagged, name
        assert piped[name].fpr == direct[name].fpr
    assert piped["any"].recall("tool_shadowing") > 0  # new_tool sees the call to the shadow server


def test_min_severity_drops_findings_below_it(traffic) -> None:
    med = pipeline_replay(traffic, [NewToolDetector(NewToolConfig(severity="medium"))], min_severity="medium")
    high = pipeline_replay(traffic, [NewToolDetector(NewToolConfig(severity="medium"))], min_severity="high")
    assert med["new_tool"].findings > 0 and med["new_tool"].flagged
    assert high["new_tool"].findings == 0 and not high["any"].flagged


def test_unknown_min_severity_is_an_error_naming_the_choices(traffic) -> None:
    with pytest.raises(ValueError, match="min_severity.*info, low, medium, high, critical"):
        pipeline_replay(traffic, [], min_severity="urgent")


def test_score_counts_spans_incidents_and_union(traffic) -> None:
    attack = traffic.attacks[0]
    benign = next(e for e in traffic.events if e.span_id not in traffic.labels)
    hit = Finding(detector="d1", severity="high", agent_id=attack.agent_id, reason="r", time_ns=attack.time_ns + 2_000_000_000,
                  span_ids=(attack.span_ids[0],))
    noise = Finding(detector="d2", severity="high", agent_id=benign.agent_id, reason="r", time_ns=benign.time_ns,
                    span_ids=(benign.span_id,))
    reps = score(traffic, [hit, noise], ["d1", "d2", "quiet"])
    assert reps["quiet"].findings == 0 and reps["quiet"].flagged == {}
    assert reps["d1"].detected == {attack.kind: 1} and reps["d1"].precision == 1.0
    assert reps["d1"].delays_s[attack.kind] == [2.0]
    assert reps["d2"].false_positives == 1 and reps["d2"].true_positives == 0
    assert reps["any"].true_positives == 1 and reps["any"].false_positives == 1 and reps["any"].findings == 2
