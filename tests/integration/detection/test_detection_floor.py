"""Detection-quality floor of the whole daemon: the default detectors (``build_detectors(Config())``)
through the collector's real Pipeline on one fixed seed of labelled traffic, counting findings at
or above ``medium`` as alerts (what the default webhook pages on).

The floors sit below the measured figures (docs/detection-quality.md; seed 2 measures recall
1.00 on every kind, FPR 0.36 %, clean-session FPR 0.08 %, precision 0.925), so a regression fails here while the
bench (bench/detection/all.py) reports the exact numbers over several seeds.
"""

from __future__ import annotations

import pytest

from toolwatch.simulate.pipeline_replay import pipeline_findings, score_at
from toolwatch.simulate.traffic import ATTACK_KINDS, generate

SEED = 2
RECALL_FLOOR = {
    "exfiltration": 0.8,
    "secret_in_args": 0.8,
    "sequence_hijack": 0.8,
    "volume_spike": 0.8,
    "rug_pull": 0.8,
    "tool_shadowing": 0.8,
}
FPR_CEILING = 0.006
FPR_CLEAN_CEILING = 0.003
PRECISION_FLOOR = 0.8


@pytest.fixture(scope="module")
def runs():
    traffic = generate(seed=SEED, agents_per_archetype=2, sessions_per_agent=60)
    names, findings = pipeline_findings(traffic)  # one run; scored at two severity floors
    return traffic, score_at(traffic, names, findings, "medium"), score_at(traffic, names, findings, "info")


def test_every_attack_kind_is_injected_and_has_a_floor(runs) -> None:
    traffic, reports, _ = runs
    assert set(RECALL_FLOOR) == set(ATTACK_KINDS)
    assert all(reports["any"].incidents.get(k, 0) >= 4 for k in ATTACK_KINDS)


@pytest.mark.parametrize("kind", ATTACK_KINDS)
def test_union_recall_per_attack_kind_at_medium(runs, kind: str) -> None:
    _, reports, _ = runs
    assert reports["any"].recall(kind) >= RECALL_FLOOR[kind], reports["any"].to_dict()


def test_union_false_positive_rate_and_precision_at_medium(runs) -> None:
    _, reports, _ = runs
    union = reports["any"]
    assert union.fpr <= FPR_CEILING, {n: round(r.fpr, 4) for n, r in reports.items()}
    assert union.fpr_clean <= FPR_CLEAN_CEILING
    assert union.precision >= PRECISION_FLOOR


def test_low_and_info_findings_are_signals_not_pages(runs) -> None:
    """Counting every finding (>= info) is the naive baseline: far noisier than the pages."""
    _, reports, everything = runs
    assert everything["any"].fpr > 5 * reports["any"].fpr
    assert everything["any"].findings > reports["any"].findings
