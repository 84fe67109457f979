"""Per-agent metrics for the agent drill-down and fleet dashboards.

Why a module of its own: these series are keyed by agent, so they need one cardinality guard
shared by all of them (an agent folded into ``other`` is folded everywhere), and two of them are
read-outs of detector state (the volume detector's rate band) rather than counts of events.
The pipeline calls ``after_batch`` once per micro-batch, after the detectors have run and before
the next batch starts, so reading detector state there never races with ``observe``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter as Tally
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from toolwatch.detectors.events import Batch, Finding

from .metrics import OTHER, LabelGuard, observe_many

__all__ = ["AgentMetrics", "RateBandSource", "SCORE_BUCKETS"]

SCORE_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0, 2.0, 5.0, 10.0)
"""Finding scores: 0..1 for most detectors, robust z-scores (often 4..20) for volume spikes."""

_SLOTS = 10
"""The score window is kept as this many max-per-slot buckets: bounded memory per agent."""


class RateBandSource(Protocol):
    """What the volume detector offers: per agent (calls/s, low, high) of its last closed window."""

    def rate_bands(self) -> dict[str, tuple[float, float, float]]: ...


def find_rate_band_source(detectors: Sequence[object]) -> RateBandSource | None:
    """The first detector that reports per-agent rate bands (the volume detector), if any."""
    for det in detectors:
        if callable(getattr(det, "rate_bands", None)):
            return det  # type: ignore[return-value]
    return None


class AgentMetrics(Collector):
    """Registers the per-agent series on ``registry`` and keeps them current from ``after_batch``.

    Series:
      - ``toolwatch_agent_findings_total{agent,detector,severity}`` counter;
      - ``toolwatch_agent_finding_score{agent}`` histogram of finding scores;
      - ``toolwatch_agent_anomaly_score{agent}`` gauge: highest finding score in the last
        ``score_window_s`` seconds (0 once the window has passed without findings);
      - ``toolwatch_agent_calls_per_second{agent}`` gauge and
        ``toolwatch_agent_calls_per_second_band{agent,bound="low"|"high"}``: the volume
        detector's last closed window and its baseline band (no band while warming up).
    At most ``agent_cap`` agents get their own label; later ones are counted as ``other`` (the
    read-out gauges leave ``other`` out: a rate or band of several agents means nothing).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        detectors: Sequence[object] = (),
        *,
        agent_cap: int = 200,
        score_window_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if agent_cap < 1:
            raise ValueError("agent_cap must be at least 1")
        if score_window_s <= 0:
            raise ValueError("score_window_s must be greater than 0")
        self.source = find_rate_band_source(detectors)
        self.score_window_s = score_window_s
        self.clock = clock
        self._guard = LabelGuard(agent_cap)
        self._lock = threading.Lock()
        self._bands: dict[str, tuple[float, float, float]] = {}
        self._scores: dict[str, dict[int, float]] = {}  # agent -> {slot index: max score}
        # Per finding, ``labels()`` and the guard cost more than the observation: remember both
        # for admitted agents (at most ``agent_cap`` + 1 entries each).
        self._labels: dict[str, str] = {}
        self._score_children: dict[str, Any] = {}
        self._count_children: dict[tuple[str, str, str], Any] = {}  # (agent label, detector, severity)
        self.findings = Counter(
            "toolwatch_agent_findings_total",
            "Detector findings, by agent, detector and severity (agents capped; excess folded into 'other').",
            ["agent", "detector", "severity"],
            registry=registry,
        )
        self.finding_score = Histogram(
            "toolwatch_agent_finding_score",
            "Scores of detector findings, by agent (agents capped; excess folded into 'other').",
            ["agent"],
            buckets=SCORE_BUCKETS,
            registry=registry,
        )
        registry.register(self)

    # ------------------------------------------------------------------ feeding
    def agent_label(self, agent_id: str) -> str:
        return self._guard((agent_id or "unknown",))[0]

    def after_batch(self, batch: Batch, findings: list[Finding]) -> None:
        """Pipeline hook: count this batch's findings and refresh the rate bands."""
        self.observe_findings(findings)
        if self.source is not None:
            self.set_bands(self.source.rate_bands())

    def observe_findings(self, findings: Iterable[Finding]) -> None:
        """Tally the findings, then update each agent's series once: its score histogram with
        ``observe_many`` and its window slot with the maximum of its finite scores (the first
        greatest, as one ``max`` after another would keep)."""
        now = self.clock()
        slot = int(now // (self.score_window_s / _SLOTS))
        tally: Tally[tuple[str, str, str]] = Tally()
        labels, children = self._labels, self._score_children
        per_agent: dict[str, list[float]] = {}
        with self._lock:
            for f in findings:
                agent = labels.get(f.agent_id)
                if agent is None:
                    agent = self.agent_label(f.agent_id)
                    if agent != OTHER:  # admitted for good: remembered (folded ids are not, so this stays capped)
                        labels[f.agent_id] = agent
                tally[(agent, f.detector, f.severity)] += 1
                scores = per_agent.get(agent)
                if scores is None:
                    per_agent[agent] = [f.score]
                else:
                    scores.append(f.score)
            for agent, scores in per_agent.items():
                child = children.get(agent)
                if child is None:
                    child = children[agent] = self.finding_score.labels(agent)
                observe_many(child, scores)
                if agent != OTHER:
                    finite = [x for x in scores if math.isfinite(x)]
                    if finite:
                        top = max(finite)
                        slots = self._scores.setdefault(agent, {})
                        slots[slot] = max(slots.get(slot, top), top)
        counts = self._count_children  # bounded: capped agents x detectors x severities
        for key, n in tally.items():
            child = counts.get(key)
            if child is None:
                child = counts[key] = self.findings.labels(*key)
            child.inc(n)

    def set_bands(self, bands: dict[str, tuple[float, float, float]]) -> None:
        kept = {}
        for agent, band in bands.items():
            if agent == "*" or self.agent_label(agent) == OTHER:
                continue
            kept[agent] = band
        with self._lock:
            self._bands = kept

    # ------------------------------------------------------------------ read-out
    def anomaly_scores(self) -> dict[str, float]:
        """Per agent: highest finding score within the score window; forgets agents idle past it."""
        oldest = int(self.clock() // (self.score_window_s / _SLOTS)) - _SLOTS + 1
        out: dict[str, float] = {}
        with self._lock:
            for agent in list(self._scores):
                slots = self._scores[agent]
                for idx in [i for i in slots if i < oldest]:
                    del slots[idx]
                if slots:
                    out[agent] = max(slots.values())
                else:
                    out[agent] = 0.0
                    del self._scores[agent]  # reported at 0 once, then the series goes away
        return out

    def collect(self) -> Iterator[Metric]:
        score = GaugeMetricFamily(
            "toolwatch_agent_anomaly_score",
            f"Highest finding score of the agent in the last {self.score_window_s:g}s (0 when none).",
            labels=["agent"],
        )
        for agent, value in sorted(self.anomaly_scores().items()):
            score.add_metric([agent], value)
        rate = GaugeMetricFamily(
            "toolwatch_agent_calls_per_second",
            "Agent's call rate in the volume detector's last closed window.",
            labels=["agent"],
        )
        band = GaugeMetricFamily(
            "toolwatch_agent_calls_per_second_band",
            "Agent's baseline call-rate band (median ± k robust deviations), by bound; absent while learning.",
            labels=["agent", "bound"],
        )
        with self._lock:
            bands = dict(self._bands)
        for agent, (value, low, high) in sorted(bands.items()):
            rate.add_metric([agent], value)
            if math.isfinite(low) and math.isfinite(high):
                band.add_metric([agent, "low"], low)
                band.add_metric([agent, "high"], high)
        yield score
        yield rate
        yield band

    def describe(self) -> Iterator[Metric]:
        """Names only (so registering never calls ``collect`` and never touches detector state)."""
        yield GaugeMetricFamily("toolwatch_agent_anomaly_score", "", labels=["agent"])
        yield GaugeMetricFamily("toolwatch_agent_calls_per_second", "", labels=["agent"])
        yield GaugeMetricFamily("toolwatch_agent_calls_per_second_band", "", labels=["agent", "bound"])
