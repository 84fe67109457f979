"""Every Prometheus metric the daemon exports, declared once, on a registry passed in.

Counts are aggregated per batch before touching prometheus_client (~1 µs per labelled ``inc``).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter as Tally
from itertools import islice
from typing import Any, Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.values import MutexValue

from toolwatch import __version__
from toolwatch.detectors.events import SEVERITIES, Finding

OTHER = "other"
TOOL_LABEL_CAP = 10_000
"""Default most (agent, server, tool) series of ``toolwatch_tool_calls_total`` (config ``tool_label_cap``).

A fleet of a few hundred agents, each using a handful to a few dozen tools, has thousands of
combinations (bench/workloads.py's fleet: 200 agents, ~1,100); the cap is there so that traffic
with made-up names (a bug, an attacker) cannot grow the series without bound, not to trim a normal
fleet. 10,000 series is about 1 MB per scrape and well within what one Prometheus holds; an
operator with a larger fleet raises it. (It was 500: a fleet of 200 agents folded over a quarter of its calls
into ``other``, and every batch added and folded the same keys again.)"""
SERVER_LABEL_CAP = 1_000
"""Most ``server`` series of ``toolwatch_tool_listings_total``: a fleet has tens of MCP servers, not
thousands; the names come from the traffic, so made-up ones fold into ``other`` past the cap."""


def observe_many(child: Any, amounts: Sequence[float]) -> None:
    """``child.observe(a)`` for each of ``amounts``, in order, with one lock round per bucket touched.

    A labelled Histogram child costs a lock per ``observe`` on its sum and one on a bucket; a batch's
    scores go to a few children, so they are binned here (``bisect``: the first bound >= the
    amount, as ``observe``'s ``amount <= bound``; NaN lands in no bucket) and added at once.
    The sum is read, advanced by each amount in order and written back, so it is the same float
    as one ``observe`` after another. That read-modify-write assumes a single writer: only the
    pipeline's loop observes these children. Other value classes (multiprocess mode) take the
    plain path.
    """
    if not amounts:
        return
    total = child._sum
    if type(total) is not MutexValue:
        for a in amounts:
            child.observe(a)
        return
    bounds = child._upper_bounds
    n_bounds = len(bounds)
    counts = [0] * n_bounds
    value = total.get()
    for a in amounts:
        value += a
        i = bisect_left(bounds, a)
        if i < n_bounds and a == a:  # a != a: NaN, in no bucket (every comparison is false)
            counts[i] += 1
    total.set(value)
    buckets = child._buckets
    for i, n in enumerate(counts):
        if n:
            buckets[i].inc(n)


class LabelGuard:
    """Caps the distinct values of a label set; later newcomers fold into ``other``."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._seen: set[tuple[str, ...]] = set()

    def __call__(self, labels: tuple[str, ...]) -> tuple[str, ...]:
        if labels in self._seen:
            return labels
        if len(self._seen) < self.cap:
            self._seen.add(labels)
            return labels
        return tuple(OTHER for _ in labels)


class ScrapeCounts:
    """A gauge with one label, its values read from one ``counts()`` call per scrape (a custom
    collector, as ``CallTally``): ``counts`` walks every agent, which is worth doing once a scrape,
    not after every batch (at 10,000 agents, milliseconds per batch) nor once per label. A read that
    fails (made while a batch changes what it walks) reports the last good values; until
    ``watch`` is called the gauge has no series."""

    def __init__(self, name: str, documentation: str, label: str, values: tuple[str, ...], *,
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.values = values
        self._counts: Callable[[], dict[str, int]] | None = None
        self._last = dict.fromkeys(values, 0.0)
        registry.register(self)

    def watch(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=[self.label])

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> list[GaugeMetricFamily]:
        family = self._family()
        if self._counts is None:
            return [family]
        try:
            got = self._counts()
            self._last = {v: float(got.get(v, 0)) for v in self.values}
        except Exception:
            pass
        for v in self.values:
            family.add_metric([v], self._last[v])
        return [family]


class CallTally:
    """A labelled counter kept as plain counts and exported at scrape time (a custom collector).

    prometheus_client costs ~1 µs per labelled ``inc`` and a batch has hundreds of distinct
    (agent, server, tool) keys; here a batch is tallied at C speed and merged under one lock.
    Capped like ``LabelGuard``: the first ``cap`` distinct keys keep their labels, later ones
    count under ``other`` for every label, so memory and series stay bounded and no call is lost.
    """

    def __init__(
        self, name: str, documentation: str, labelnames: tuple[str, ...], *, cap: int, registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.cap = cap
        self._counts: Tally[tuple[str, ...]] = Tally()
        self._other = 0
        self._lock = threading.Lock()
        registry.register(self)

    def add(self, keys: Iterable[tuple[str, ...]]) -> None:
        counts = self._counts
        with self._lock:
            counts.update(keys)  # one pass at C speed; new keys go last (dicts keep insertion order)
            if len(counts) > self.cap:
                # Keys past the first ``cap`` arrived after the cap was reached: fold them.
                for key in list(islice(counts, self.cap, None)):
                    self._other += counts.pop(key)

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def describe(self) -> list[CounterMetricFamily]:
        return [self._family()]

    def collect(self) -> list[CounterMetricFamily]:
        with self._lock:
            counts = dict(self._counts)
            other = self._other
        if other:
            key = tuple(OTHER for _ in self.labelnames)
            counts[key] = counts.get(key, 0) + other
        family = self._family()
        for key, n in counts.items():
            family.add_metric(key, n)
        return [family]


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, tool_label_cap: int = TOOL_LABEL_CAP) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = Info("toolwatch_build", "toolwatch build information.", registry=r)
        self.build_info.info({"version": __version__})
        self.process = ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU, open fds
        self.spans_received = Counter(
            "toolwatch_spans_received_total", "Spans received, by receiver.", ["receiver"], registry=r
        )
        self.spans_rejected = Counter(
            "toolwatch_spans_rejected_total",
            "Spans rejected, by receiver and reason.",
            ["receiver", "reason"],
            registry=r,
        )
        self.requests_rejected = Counter(
            "toolwatch_requests_rejected_total",
            "Whole requests rejected, by receiver and reason.",
            ["receiver", "reason"],
            registry=r,
        )
        self.tool_calls = CallTally(
            "toolwatch_tool_calls",
            "Tool calls seen, by agent, server and tool (capped; excess folded into 'other').",
            ("agent", "server", "tool"),
            cap=tool_label_cap,
            registry=r,
        )
        self.tool_listings = Counter(
            "toolwatch_tool_listings_total", "tools/list results seen, by server.", ["server"], registry=r
        )
        self.findings = Counter(
            "toolwatch_findings_total", "Detector findings, by detector and severity.", ["detector", "severity"], registry=r
        )
        self.alerts = Counter(
            "toolwatch_alerts_total",
            "Alerts raised (findings after grouping), by detector and severity.",
            ["detector", "severity"],
            registry=r,
        )
        self.event_time = Counter(
            "toolwatch_spans_event_time_total",
            "Spans whose timestamp broke the event-time rule, by action (clamped, rejected) and reason.",
            ["action", "reason"],
            registry=r,
        )
        self.queue_depth = Gauge("toolwatch_pipeline_queue_depth", "Events waiting for the detectors.", registry=r)
        self.batch_size = Histogram(
            "toolwatch_pipeline_batch_size",
            "Events per micro-batch.",
            buckets=(1, 8, 32, 128, 512, 2048, 8192),
            registry=r,
        )
        self.lag = Histogram(
            "toolwatch_pipeline_lag_seconds",
            "Time from a request's arrival to its findings being stored.",
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.detector_errors = Counter(
            "toolwatch_detector_errors_total", "Exceptions raised by a detector, by detector.", ["detector"], registry=r
        )
        self.state_snapshots = Counter(
            "toolwatch_state_snapshots_total",
            "Detector-state snapshots, by where they were written (process: a forked child, daemon: the "
            "daemon's own process) and outcome (ok, failed).",
            ["where", "outcome"], registry=r,
        )
        self.webhook_deliveries = Counter(
            "toolwatch_webhook_deliveries_total",
            "Webhook delivery attempts, by receiver and outcome.",
            ["receiver", "outcome"],
            registry=r,
        )
        self.outbox_depth = Gauge(
            "toolwatch_webhook_outbox_depth", "Undelivered webhook messages, by receiver.", ["receiver"], registry=r
        )
        self.agents = ScrapeCounts("toolwatch_agents", "Agents known to the daemon, by baseline state.", "state",
                                   ("learning", "active", "frozen"), registry=r)
        self.forest_agents = ScrapeCounts(
            "toolwatch_iforest_agents",
            "Agents by the IsolationForest model that scores them: own, group, none (not scored yet).",
            "scoring", ("own", "group", "none"), registry=r)
        self.rules_reloads = Counter(
            "toolwatch_rules_reloads_total", "Rule file reloads, by outcome (ok, error).", ["outcome"], registry=r
        )
        self.rules_loaded = Gauge("toolwatch_rules_loaded", "Rules and correlations in the active rule set.", registry=r)
        self.kafka_records = Counter(
            "toolwatch_kafka_records_total",
            "Kafka records consumed, by outcome (accepted, dead_letter).",
            ["outcome"],
            registry=r,
        )
        self.kafka_commits = Counter(
            "toolwatch_kafka_commits_total", "Kafka offset commits, by outcome (ok, failed).", ["outcome"], registry=r
        )
        self.kafka_paused = Gauge(
            "toolwatch_kafka_paused", "1 while the Kafka receiver pauses its partitions (pipeline queue full).", registry=r
        )
        self.kafka_decode_fallbacks = Counter(
            "toolwatch_kafka_decode_fallback_records_total",
            "Kafka records the decode workers handed back (a worker died, hung or failed them), decoded in the "
            "consumer thread instead.",
            registry=r,
        )
        self.kafka_assigned_partitions = Gauge(
            "toolwatch_kafka_assigned_partitions", "Input partitions this member of the consumer group owns.", registry=r
        )
        self.kafka_state_agents = Counter(
            "toolwatch_kafka_state_agents_total",
            "Agent states moved through the scale-out changelog, by op (written, restored, dropped).",
            ["op"],
            registry=r,
        )
        self.kafka_state_skipped_events = Counter(
            "toolwatch_kafka_state_skipped_events_total",
            "Redelivered events skipped because the agent's restored changelog state already held them.",
            registry=r,
        )
        self.anomaly_score = Histogram(
            "toolwatch_anomaly_score",
            "Scores of detector findings (higher = more anomalous), by detector.",
            ["detector"],
            buckets=(0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0, 2.0, 5.0, 10.0),
            registry=r,
        )
        self.pending_approvals = Gauge(
            "toolwatch_pending_approvals",
            "Tool-definition changes waiting for an operator to approve or reject them.",
            registry=r,
        )
        self.outbox_dead = Gauge(
            "toolwatch_webhook_outbox_dead",
            "Webhook messages given up on after max_age_s (kept in the store), by receiver.",
            ["receiver"],
            registry=r,
        )
        self.webhook_rate_limited = Counter(
            "toolwatch_webhook_rate_limited_total",
            "Due webhook messages held back in the outbox by the receiver's rate limit, by receiver.",
            ["receiver"],
            registry=r,
        )
        self.webhook_delivery_latency = Histogram(
            "toolwatch_webhook_delivery_latency_seconds",
            "Time from an alert being stored to its webhook delivery, by receiver.",
            ["receiver"],
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 1800, 3600, 21600, 86400),
            registry=r,
        )
        self.enforcement_decisions = Counter(
            "toolwatch_enforcement_decisions_total",
            "Decisions answered to enforcing proxies, by action (allow, deny, hold) and quarantine.",
            ["action", "quarantined"],
            registry=r,
        )
        self.holds = Counter(
            "toolwatch_holds_total", "Calls held for a human, by outcome (opened, approved, denied, timed_out).",
            ["outcome"], registry=r,
        )
        self._detector_guard = LabelGuard(64)
        self._server_guard = LabelGuard(SERVER_LABEL_CAP)
        # Children of admitted detectors: ``labels()`` costs a lock and a dict lookup per call.
        self._score_children: dict[str, Any] = {}
        self._pending_last = 0.0

    def init_labels(self, detectors: Sequence[str], receivers: Sequence[str], webhooks: Sequence[str]) -> None:
        """Export known series at 0 from the start, so rules using ``increase()`` see the first event."""
        for det in detectors:
            for sev in SEVERITIES:
                self.findings.labels(det, sev)
                self.alerts.labels(det, sev)
            self.anomaly_score.labels(det)
        for rec in receivers:
            self.spans_received.labels(rec)
        for hook in webhooks:
            for outcome in ("success", "failure", "dead"):
                self.webhook_deliveries.labels(hook, outcome)
            self.webhook_rate_limited.labels(hook)
            self.webhook_delivery_latency.labels(hook)
            self.outbox_depth.labels(hook)
            self.outbox_dead.labels(hook)

    def observe_scores(self, findings: Iterable[Finding]) -> None:
        """Called by the pipeline with each batch's findings; detector names are capped like tool labels."""
        children = self._score_children
        scores: dict[Any, list[float]] = {}  # child -> its scores, in finding order
        for f in findings:
            child = children.get(f.detector)
            if child is None:
                (det,) = self._detector_guard((f.detector,))
                child = self.anomaly_score.labels(det)
                if det == f.detector:
                    children[det] = child
            got = scores.get(child)
            if got is None:
                scores[child] = [f.score]
            else:
                got.append(f.score)
        for child, values in scores.items():
            observe_many(child, values)

    def watch_pending_approvals(self, source: Callable[[], Sequence[Any]]) -> None:
        """Feed the pending-approvals gauge from ``source()`` at scrape time (e.g. a detector's ``pending``).

        A source that fails (say, read while a batch changes it) reports its last good value.
        """

        def value() -> float:
            try:
                self._pending_last = float(len(source()))
            except Exception:
                pass
            return self._pending_last

        self.pending_approvals.set_function(value)

    def watch_forest_agents(self, source: Callable[[], dict[str, int]]) -> None:
        """Feed ``toolwatch_iforest_agents`` from ``source()`` (agents by ``scoring``) at scrape time."""
        self.forest_agents.watch(source)

    def watch_agent_states(self, source: Callable[[], dict[str, str]]) -> None:
        """Feed ``toolwatch_agents`` from ``source()`` (each agent's baseline state) at scrape time."""
        self.agents.watch(lambda: Tally(source().values()))

    def count_listing(self, server: str) -> None:
        """Count one ``tools/list`` result; server names come from the traffic, so capped like tool labels."""
        (label,) = self._server_guard((server or "unknown",))
        self.tool_listings.labels(label).inc()

    def count_calls(self, keys: Iterable[tuple[str, str, str]]) -> None:
        """Count tool calls by (agent, server, tool), capped (see ``CallTally``); call once per batch."""
        self.tool_calls.add(keys)

