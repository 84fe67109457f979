"""IsolationForest finding severity: the calibrated tail is low (a signal), moderate outliers
medium, clear ones high."""

from __future__ import annotations

import pytest

from toolwatch.detectors.iforest_detector import ForestConfig, finding_severity

K = 0.75  # range_k default


@pytest.mark.parametrize("margin, excess, severity", [
    (0.001, 0.0, "low"),      # just over the threshold: the model's calibrated 0.2 % tail
    (-0.2, 1.0, "low"),       # a feature 1 range-width out (1.33 k): below 2 k
    (0.029, 1.49, "low"),     # near misses on both medium boundaries
    (0.03, 0.0, "medium"),    # margin boundary
    (-0.2, 1.5, "medium"),    # excess boundary: 2 k
    (0.079, 2.99, "medium"),  # near misses on both high boundaries
    (0.08, 0.0, "high"),
    (-0.2, 3.0, "high"),      # 4 k
])
def test_tiers(margin: float, excess: float, severity: str) -> None:
    assert finding_severity(ForestConfig(), margin, excess, K) == severity


def test_tiers_follow_config_and_are_validated() -> None:
    loud = ForestConfig(medium_margin=0.0, medium_range_excess=0.0)
    assert finding_severity(loud, 0.0, 0.0, K) == "medium"
    with pytest.raises(ValueError, match="medium_margin"):
        ForestConfig(medium_margin=0.5).validate()
    with pytest.raises(ValueError, match="medium_range_excess"):
        ForestConfig(medium_range_excess=5.0).validate()
