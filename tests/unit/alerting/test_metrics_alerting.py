"""Metrics: cardinality guard, score histogram, pending-approvals callback, and promtool-clean /metrics."""

from __future__ import annotations

import shutil
import subprocess

import requests

from helpers.alert_builders import finding
from helpers.daemon import DaemonThread, make_config
from helpers.spans import emit_call, provider
from toolwatch.collector.config import WebhookConfig
from toolwatch.collector.metrics import OTHER, SERVER_LABEL_CAP, LabelGuard, Metrics


def value(m: Metrics, name: str, labels: dict | None = None) -> float | None:
    return m.registry.get_sample_value(name, labels or {})


def test_label_guard_caps_distinct_values_and_folds_the_rest():
    g = LabelGuard(2)
    assert g(("a", "s", "t")) == ("a", "s", "t")
    assert g(("b", "s", "t")) == ("b", "s", "t")
    assert g(("c", "s", "t")) == (OTHER, OTHER, OTHER)
    assert g(("a", "s", "t")) == ("a", "s", "t")  # known values keep their label


def test_tool_call_counter_never_exceeds_its_cap():
    m = Metrics(tool_label_cap=3)
    m.count_calls((f"agent{i}", "srv", "tool") for i in range(10))
    samples = [s for s in m.tool_calls.collect()[0].samples if s.name.endswith("_total")]
    assert len(samples) == 4  # 3 kept + "other"
    assert value(m, "toolwatch_tool_calls_total", {"agent": OTHER, "server": OTHER, "tool": OTHER}) == 7


def test_tool_call_counts_across_batches_match_a_call_by_call_label_guard():
    import random
    from collections import Counter

    rnd = random.Random(7)
    batches = [[(f"a{rnd.randrange(12)}", "srv", rnd.choice("xyz")) for _ in range(rnd.randrange(0, 30))] for _ in range(40)]
    m, guard, expected = Metrics(tool_label_cap=10), LabelGuard(10), Counter()
    for batch in batches:
        m.count_calls(iter(batch))
        expected.update(guard(k) for k in batch)
    got = {
        (s.labels["agent"], s.labels["server"], s.labels["tool"]): s.value
        for s in m.tool_calls.collect()[0].samples
        if s.name == "toolwatch_tool_calls_total"
    }
    assert got == expected and len(got) == 11


def test_daemon_caps_tool_call_series_at_the_configured_tool_label_cap(tmp_path):
    from toolwatch.collector.daemon import Daemon

    d = Daemon(make_config(tmp_path, tool_label_cap=2))
    try:
        d.metrics.count_calls([("a1", "s", "t"), ("a2", "s", "t"), ("a3", "s", "t"), ("a1", "s", "t")])
        assert value(d.metrics, "toolwatch_tool_calls_total", {"agent": "a1", "server": "s", "tool": "t"}) == 2
        assert value(d.metrics, "toolwatch_tool_calls_total", {"agent": "a3", "server": "s", "tool": "t"}) is None
        assert value(d.metrics, "toolwatch_tool_calls_total", {"agent": OTHER, "server": OTHER, "tool": OTHER}) == 1
    finally:
        d.store.close()


def test_default_tool_label_cap_keeps_a_fleet_of_a_few_hundred_agents_unfolded():
    m = Metrics()
    m.count_calls((f"agent{i}", f"srv{j % 5}", f"tool{j}") for i in range(300) for j in range(30))
    assert value(m, "toolwatch_tool_calls_total", {"agent": OTHER, "server": OTHER, "tool": OTHER}) is None
    assert value(m, "toolwatch_tool_calls_total", {"agent": "agent299", "server": "srv4", "tool": "tool29"}) == 1


def test_tool_listing_servers_past_the_cap_count_under_other():
    m = Metrics()
    for n in range(SERVER_LABEL_CAP + 5):
        m.count_listing(f"server-{n}")
    m.count_listing("server-0")
    m.count_listing("")
    families = {s.labels["server"]: s.value for s in m.tool_listings.collect()[0].samples if s.name.endswith("_total")}
    assert len(families) == SERVER_LABEL_CAP + 1
    assert families["server-0"] == 2
    assert "unknown" not in families and families[OTHER] == 6  # five newcomers and the nameless one
    assert sum(families.values()) == SERVER_LABEL_CAP + 7


def test_anomaly_scores_by_detector():
    m = Metrics()
    m.observe_scores([finding(0, score=0.3), finding(1, score=0.97), finding(2, detector="volume", score=4.0)])
    assert value(m, "toolwatch_anomaly_score_count", {"detector": "new_tool"}) == 2
    assert value(m, "toolwatch_anomaly_score_bucket", {"detector": "new_tool", "le": "0.5"}) == 1
    assert value(m, "toolwatch_anomaly_score_sum", {"detector": "volume"}) == 4.0


class _Source:
    """A scrape-time source: ``value`` until ``fail`` is set, then the error a dict read while a batch
    changes it raises."""

    def __init__(self, value):
        self.value, self.fail = value, False

    def __call__(self):
        if self.fail:
            raise RuntimeError("dictionary changed size during iteration")
        return self.value


def test_pending_approvals_gauge_reads_the_callback_and_survives_its_failures():
    m = Metrics()
    assert value(m, "toolwatch_pending_approvals") == 0
    pending = _Source([{"id": "p1"}, {"id": "p2"}])
    m.watch_pending_approvals(pending)
    assert value(m, "toolwatch_pending_approvals") == 2
    pending.value.pop()
    assert value(m, "toolwatch_pending_approvals") == 1
    pending.fail = True
    assert value(m, "toolwatch_pending_approvals") == 1  # last good value


def test_the_forest_gauge_is_read_at_scrape_time_and_keeps_its_last_good_values():
    m = Metrics()
    counts = _Source({"own": 3, "group": 1, "none": 2})
    m.watch_forest_agents(counts)
    assert value(m, "toolwatch_iforest_agents", {"scoring": "none"}) == 2
    counts.value["none"] = 0
    assert value(m, "toolwatch_iforest_agents", {"scoring": "none"}) == 0
    counts.fail = True
    assert value(m, "toolwatch_iforest_agents", {"scoring": "own"}) == 3  # last good value


def test_the_agents_gauge_counts_states_at_scrape_time_and_keeps_its_last_good_values():
    m = Metrics()
    states = _Source({"a": "learning", "b": "active", "c": "active"})
    m.watch_agent_states(states)
    assert value(m, "toolwatch_agents", {"state": "active"}) == 2
    assert value(m, "toolwatch_agents", {"state": "frozen"}) == 0
    states.value["a"] = "frozen"
    assert value(m, "toolwatch_agents", {"state": "learning"}) == 0
    assert value(m, "toolwatch_agents", {"state": "frozen"}) == 1
    states.fail = True
    states.value["d"] = "active"
    assert value(m, "toolwatch_agents", {"state": "active"}) == 2  # last good value


def test_known_series_start_at_zero():
    m = Metrics()
    m.init_labels(["exfiltration"], ["otlp_http"], ["ops"])
    assert value(m, "toolwatch_findings_total", {"detector": "exfiltration", "severity": "critical"}) == 0
    assert value(m, "toolwatch_spans_received_total", {"receiver": "otlp_http"}) == 0
    assert value(m, "toolwatch_webhook_deliveries_total", {"receiver": "ops", "outcome": "dead"}) == 0


def _metrics_after_calls(cfg, calls: list[tuple[str, str, str]]) -> tuple[str, list[str]]:
    """Run a daemon, send ``calls`` (agent, server, tool) through the SDK's OTLP/HTTP exporter and scrape
    ``/metrics``: its text, and the names of the daemon's detectors."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    with DaemonThread(cfg) as d:
        tp = provider(OTLPSpanExporter(endpoint=d.otlp_http_url))
        for agent, server, tool in calls:
            emit_call(tp, agent=agent, server=server, tool=tool)
        tp.shutdown()
        d.drain()
        return requests.get(d.api_url + "/metrics", timeout=5).text, [det.name for det in d.daemon.detectors]


def test_the_forest_gauge_counts_agents_no_model_scores_yet(tmp_path):
    text, detectors = _metrics_after_calls(make_config(tmp_path, otlp_processes=0),
                                           [("coder", "fs", "read"), ("writer", "fs", "read")])
    assert "iforest" in detectors
    assert 'toolwatch_iforest_agents{scoring="none"} 2.0' in text
    assert 'toolwatch_iforest_agents{scoring="own"} 0.0' in text
    assert 'toolwatch_agents{state="learning"} 2.0' in text  # the sequence model's states, read by the scrape
    assert 'toolwatch_agents{state="active"} 0.0' in text


def test_live_metrics_endpoint_is_promtool_clean(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: run 'make services'"
    cfg = make_config(tmp_path, otlp_processes=0, webhooks=[WebhookConfig(url="http://127.0.0.1:9/hook", name="ops", secret="k")])
    cfg.detectors = {"new_tool": {"min_calls": 1, "severity": "high"}}
    text, _detectors = _metrics_after_calls(cfg, [("coder", "fs", "read"), ("coder", "mail", "send")])
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in (
        "toolwatch_build_info", "toolwatch_anomaly_score_bucket", "toolwatch_pending_approvals",
        "toolwatch_webhook_outbox_depth", "toolwatch_webhook_outbox_dead", "toolwatch_webhook_rate_limited_total",
        "toolwatch_webhook_delivery_latency_seconds_bucket",
        "toolwatch_pipeline_queue_depth", "toolwatch_pipeline_lag_seconds_bucket", "toolwatch_agents",
    ):
        assert f"\n{name}" in text, name
    assert 'toolwatch_anomaly_score_count{detector="new_tool"} 1.0' in text
