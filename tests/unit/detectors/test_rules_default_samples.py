"""The shipped default rules: they load, every rule has samples, and every sample behaves."""

from __future__ import annotations

from importlib.resources import files

import pytest

from toolwatch.detectors.rules import check_samples, load_rules

TEXT = files("toolwatch.detectors.rules").joinpath("default_rules.yaml").read_text(encoding="utf-8")
RULESET = load_rules(TEXT, "default_rules.yaml")
RESULTS = check_samples(RULESET)


def test_every_rule_and_correlation_ships_positive_and_negative_samples() -> None:
    for item in list(RULESET.rules) + list(RULESET.correlations):
        assert item.samples.should_fire, f"{item.name} has no should_fire sample"
        assert item.samples.should_not_fire, f"{item.name} has no should_not_fire sample"


def test_default_rules_cover_the_built_in_flow_detections() -> None:
    names = set(RULESET.names())
    assert {"secret_in_outbound_args", "read_secret_then_send_out", "many_new_destinations",
            "outbound_after_injected_instructions"} <= names
    corr = RULESET.correlation("read_secret_then_send_out")
    assert corr is not None and corr.timespan_ns == 600 * 10**9 and corr.type == "temporal_ordered"


def test_every_rule_carries_owasp_or_atlas_tags() -> None:
    for item in list(RULESET.rules) + list(RULESET.correlations):
        if item.severity != "info":
            assert any(t.startswith(("owasp.", "atlas.")) for t in item.tags), item.name


@pytest.mark.parametrize("result", RESULTS, ids=[f"{r.rule}-{r.expectation}-{r.index}" for r in RESULTS])
def test_sample(result) -> None:
    assert result.passed, str(result)


def test_reference_doc_lists_every_field() -> None:
    from pathlib import Path

    from toolwatch.detectors.rules import FIELDS

    doc = Path(__file__).resolve().parents[3] / "docs" / "rules.md"
    text = doc.read_text(encoding="utf-8")
    missing = [name for name in FIELDS if f"| `{name}` |" not in text]
    assert missing == []
