"""Real Prometheus scrapes a real daemon, evaluates the shipped rules, fires to a real Alertmanager,
which posts to a local webhook receiver. Uses compose/prometheus/rules/toolwatch.rules.yml as shipped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests
import yaml
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

from helpers.alert_builders import finding, stored
from helpers.daemon import DaemonThread, make_config
from helpers.procs import Proc, free_port, need, wait_until
from helpers.spans import emit_call, provider
from helpers.webhook_receiver import WebhookReceiver
from toolwatch.collector.sinks.formats import render
from toolwatch.detectors.base import Detector
from toolwatch.detectors.new_tool import NewToolConfig, NewToolDetector

RULES = Path(__file__).resolve().parents[3] / "compose" / "prometheus" / "rules" / "toolwatch.rules.yml"


class OnePending(Detector):
    """Approval surface with one pending change, so the pending-approvals rule has something to see."""

    name = "pins"

    def observe(self, batch):
        return []

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, state):
        pass

    def pending(self):
        return [{"id": "p1", "server": "mail", "tool": "send"}]

    def approve(self, pending_id):
        raise KeyError(pending_id)

    def reject(self, pending_id):
        raise KeyError(pending_id)


def alertnames(hook: WebhookReceiver) -> dict[str, dict]:
    out = {}
    for r in hook.received:
        for a in json.loads(r.body)["alerts"]:
            out[a["labels"]["alertname"]] = a
    return out


def test_shipped_rules_fire_through_alertmanager_to_a_webhook(tmp_path):
    prom_bin, am_bin = need("prometheus"), need("prometheus-alertmanager")
    prom_port, am_port = free_port(), free_port()
    cfg = make_config(tmp_path, otlp_processes=0)
    detectors = [NewToolDetector(NewToolConfig(min_calls=1, severity="high")), OnePending()]
    with WebhookReceiver() as hook, DaemonThread(cfg, detectors=detectors) as d:
        daemon_target = d.api_url.removeprefix("http://")
        (tmp_path / "am.yml").write_text(
            yaml.safe_dump(
                {
                    "route": {"receiver": "hook", "group_by": ["alertname"], "group_wait": "0s",
                              "group_interval": "1s", "repeat_interval": "1h"},
                    "receivers": [{"name": "hook", "webhook_configs": [{"url": hook.url, "send_resolved": False}]}],
                }
            )
        )
        (tmp_path / "prom.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "scrape_configs": [{"job_name": "toolwatch", "static_configs": [{"targets": [daemon_target]}]}],
                    "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
                }
            )
        )
        am = Proc([am_bin, f"--config.file={tmp_path / 'am.yml'}", f"--storage.path={tmp_path / 'am-data'}",
                   f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="], tmp_path / "am.log")
        prom = Proc([prom_bin, f"--config.file={tmp_path / 'prom.yml'}", f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                     f"--web.listen-address=127.0.0.1:{prom_port}"], tmp_path / "prom.log")
        with am, prom:
            prom_api = f"http://127.0.0.1:{prom_port}/api/v1/query"

            def scraped_zero() -> bool:
                q = 'toolwatch_findings_total{job="toolwatch",detector="new_tool",severity="high"}'
                res = requests.get(prom_api, params={"query": q}, timeout=2).json()["data"]["result"]
                return bool(res) and res[0]["value"][1] == "0"

            # Prometheus has seen the finding counter at 0 before the finding: increase() will see it.
            wait_until(scraped_zero, 30, "Prometheus to scrape the daemon", prom.proc, tmp_path / "prom.log")
            wait_until(lambda: requests.get(f"http://127.0.0.1:{am_port}/-/ready", timeout=2).ok, 30,
                       "Alertmanager to be ready", am.proc, tmp_path / "am.log")
            tp = provider(OTLPSpanExporter(endpoint=d.otlp_http_url))
            emit_call(tp, agent="coder", server="fs", tool="read_file")
            emit_call(tp, agent="coder", server="mail", tool="send_mail")
            tp.shutdown()
            d.drain()
            assert d.metric("toolwatch_findings_total", {"detector": "new_tool", "severity": "high"}) == 1
            wanted = {"ToolwatchHighSeverityFinding", "ToolwatchToolDefinitionPendingApproval"}
            got = wait_until(lambda: (lambda n: n if wanted <= set(n) else None)(alertnames(hook)), 40,
                             "Alertmanager to post both alerts", prom.proc, tmp_path / "prom.log")
    high = got["ToolwatchHighSeverityFinding"]
    assert high["labels"]["detector"] == "new_tool" and high["labels"]["severity"] == "high"
    assert high["labels"]["job"] == "toolwatch" and high["status"] == "firing"
    assert "toolwatch alerts list --severity high" in high["annotations"]["description"]
    assert got["ToolwatchToolDefinitionPendingApproval"]["annotations"]["summary"].startswith("toolwatch: 1 tool-definition")
    # Our own "alertmanager" webhook format has the same shape as what Alertmanager really sends.
    real = json.loads(hook.received[0].body)
    ours = json.loads(render("alertmanager", [stored(finding(0))], "hook"))
    assert set(ours) == set(real), set(ours) ^ set(real)
    assert set(ours["alerts"][0]) == set(real["alerts"][0]), set(ours["alerts"][0]) ^ set(real["alerts"][0])
    for key in ours:
        assert type(ours[key]) is type(real[key]), key
