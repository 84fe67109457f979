"""Per-batch histogram updates (``observe_many``, per-agent grouping) must export exactly what one
``observe`` per finding exported: same buckets, same float sums (NaN, infinities and signed zeros
included), same per-agent window maxima."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from toolwatch.collector.agent_metrics import AgentMetrics
from toolwatch.collector.metrics import OTHER, Metrics, observe_many
from toolwatch.detectors.events import Finding

scores = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.1, 0.25, 0.5, 1.0, 5.0, 10.0, 1e300, -1e300, math.nan, math.inf, -math.inf]),
)


def _samples(registry: CollectorRegistry, prefix: str = "") -> list[tuple[str, tuple, str]]:
    """Exported samples named ``prefix``..., but the ``_created`` timestamps; values by repr
    (NaN == NaN, -0.0 != 0.0)."""
    return sorted(
        (s.name, tuple(sorted(s.labels.items())), repr(s.value))
        for fam in registry.collect()
        for s in fam.samples
        if s.name.startswith(prefix) and not s.name.endswith("_created")
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(scores, max_size=20), max_size=4))
def test_observe_many_equals_observe_one_by_one(batches: list[list[float]]) -> None:
    fast_reg, ref_reg = CollectorRegistry(), CollectorRegistry()
    buckets = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0, 2.0, 5.0, 10.0)
    fast = Histogram("h", "", ["a"], buckets=buckets, registry=fast_reg).labels("x")
    ref = Histogram("h", "", ["a"], buckets=buckets, registry=ref_reg).labels("x")
    for values in batches:
        observe_many(fast, values)
        for v in values:
            ref.observe(v)
        assert _samples(fast_reg) == _samples(ref_reg)


findings = st.lists(
    st.tuples(st.sampled_from(["a1", "a2", "a3", "a4", ""]), st.sampled_from(["volume", "rugpull", "d3", "d4"]),
              st.sampled_from(["low", "medium", "high"]), scores),
    max_size=25,
)


def _finding(agent: str, det: str, sev: str, score: float) -> Finding:
    return Finding(detector=det, severity=sev, agent_id=agent, reason="r", time_ns=1, score=score)


class ReferenceAgentMetrics(AgentMetrics):
    """The per-finding update: one histogram observe and one window max per finding."""

    def observe_findings(self, findings) -> None:
        from collections import Counter

        slot = int(self.clock() // (self.score_window_s / 10))
        tally: Counter = Counter()
        with self._lock:
            for f in findings:
                agent = self.agent_label(f.agent_id)
                tally[(agent, f.detector, f.severity)] += 1
                self.finding_score.labels(agent).observe(f.score)
                if agent != OTHER and math.isfinite(f.score):
                    slots = self._scores.setdefault(agent, {})
                    slots[slot] = max(slots.get(slot, f.score), f.score)
        for key, n in tally.items():
            self.findings.labels(*key).inc(n)


def reference_observe_scores(metrics: Metrics, found: list[Finding]) -> None:
    for f in found:
        (det,) = metrics._detector_guard((f.detector,))
        metrics.anomaly_score.labels(det).observe(f.score)


@settings(max_examples=200, deadline=None)
@given(st.lists(findings, max_size=4), st.integers(1, 4))
def test_batch_updates_export_what_per_finding_updates_did(batches, cap: int) -> None:
    now = [1000.0]
    fast_reg, ref_reg = CollectorRegistry(), CollectorRegistry()
    fast = AgentMetrics(fast_reg, agent_cap=cap, score_window_s=100, clock=lambda: now[0])
    ref = ReferenceAgentMetrics(ref_reg, agent_cap=cap, score_window_s=100, clock=lambda: now[0])
    fast_m, ref_m = Metrics(), Metrics()
    fast_m._detector_guard.cap = ref_m._detector_guard.cap = cap  # fold detectors too
    for batch in batches:
        found = [_finding(*t) for t in batch]
        fast.observe_findings(found)
        ref.observe_findings(found)
        fast_m.observe_scores(found)
        reference_observe_scores(ref_m, found)
        now[0] += 7
        assert _samples(fast_reg) == _samples(ref_reg)
        assert {k: repr(v) for k, v in fast._scores.items()} == {k: repr(v) for k, v in ref._scores.items()}
        assert _samples(fast_m.registry, "toolwatch_anomaly") == _samples(ref_m.registry, "toolwatch_anomaly")
