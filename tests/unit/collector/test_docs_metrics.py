"""docs/metrics.md lists every metric the daemon declares."""

from __future__ import annotations

from pathlib import Path

from toolwatch.collector.metrics import Metrics

DOC = (Path(__file__).resolve().parents[3] / "docs" / "metrics.md").read_text()


def test_every_declared_metric_is_documented():
    names = {m.name for m in Metrics().registry.collect()}
    missing = sorted(n for n in names if n.startswith("toolwatch_") and n not in DOC)
    assert missing == []
