"""Acceptance: SIGKILL the daemon (a real ``toolwatch run``) while it consumes from Kafka, restart it,
and show every record was processed (committed only after processing) and no alert was lost."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import requests
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from helpers.procs import free_port, wait_until
from helpers.kafka_broker import kafka_broker  # noqa: F401  (fixture)
from helpers.otlp_calls import request, workload
from helpers.webhook_receiver import WebhookReceiver
from toolwatch.collector.alerts import alert_id
from toolwatch.detectors.events import Batch, ToolCall
from toolwatch.detectors.new_tool import NewToolConfig, NewToolDetector

MIN_CALLS = 100
"""Longer than the spacing of new tools, so a baseline that forgot calls misses alerts after a restart."""


def _wait(pred, timeout=60.0, what="condition"):
    wait_until(pred, timeout, what)


def _metric(base: str, name: str, labels: str) -> float:
    try:
        text = requests.get(base + "/metrics", timeout=2).text
    except requests.RequestException:
        return -1.0
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _committed(bootstrap: str, ends: dict[int, int]) -> dict[int, int]:
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id="toolwatch", enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition("otlp_spans", p)) or 0 for p in ends}
    finally:
        c.close()


def _start(cfg_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "toolwatch.cli", "run", "--config", str(cfg_path)], stdout=log, stderr=subprocess.STDOUT
    )


def test_sigkill_mid_stream_then_restart_loses_no_call_and_no_alert(tmp_path, kafka_broker):
    kafka_broker.create_topic("otlp_spans", partitions=2)
    calls = workload(agents=4, calls_per_agent=500, new_tool_every=25)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    futures = []
    for i in range(0, len(calls), 8):  # agents interleaved, as live traffic is; key = agent id
        for agent in sorted({c.agent for c in calls[i : i + 8]}):
            mine = [c for c in calls[i : i + 8] if c.agent == agent]
            futures.append(producer.send("otlp_spans", key=agent.encode(), value=request(mine).SerializeToString()))
    producer.flush()
    ends: dict[int, int] = {}
    for fut in futures:
        md = fut.get(10)
        ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
    producer.close()

    # What a single uninterrupted pass of the detector over the calls alerts on, with alert ids.
    det = NewToolDetector(NewToolConfig(min_calls=MIN_CALLS))
    batch = Batch(
        calls=[ToolCall(time_ns=c.time_ns, agent_id=c.agent, tool=c.tool, server=c.server, session_id=c.session,
                        span_id=c.span_id.hex()) for c in calls]
    )
    expected = {alert_id(f) for f in det.observe(batch)}
    assert len(expected) == 4 * 16

    port = free_port()
    api = f"http://127.0.0.1:{port}"
    with WebhookReceiver() as hook:
        cfg_path = tmp_path / "toolwatch.yaml"
        cfg_path.write_text(yaml.safe_dump({
            "otlp_http": "off",
            "otlp_grpc": "off",
            "listen": f"127.0.0.1:{port}",
            "data_dir": str(tmp_path / "data"),
            "webhooks": [{"url": hook.url, "secret": "s3cret"}],
            "pipeline": {"batch_max_size": 10, "batch_max_delay_ms": 50},
            "detectors": {"new_tool": {"min_calls": MIN_CALLS}},
            "kafka": {
                "enabled": True,
                "bootstrap_servers": kafka_broker.bootstrap,
                "max_poll_records": 2,
                "max_poll_interval_ms": 1000,
                "session_timeout_ms": 3000,
                "commit_interval_ms": 200,
            },
        }))
        log_path = tmp_path / "daemon.log"
        first = _start(cfg_path, log_path)
        try:
            # Kill it mid-stream: after it has committed something, well before it has read everything.
            _wait(lambda: _metric(api, "toolwatch_kafka_commits_total", 'outcome="ok"') >= 1
                  and _metric(api, "toolwatch_spans_received_total", 'receiver="kafka"') >= 50,
                  what="first commits")
            seen_before_kill = _metric(api, "toolwatch_spans_received_total", 'receiver="kafka"')
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
        assert seen_before_kill < len(calls), "the daemon finished before it was killed; the test proves nothing"
        at_kill = _committed(kafka_broker.bootstrap, ends)
        assert at_kill != ends and sum(at_kill.values()) > 0

        second = _start(cfg_path, log_path)
        try:
            _wait(lambda: _committed(kafka_broker.bootstrap, ends) == ends, timeout=90, what="every record committed")
            alerts = requests.get(api + "/api/v1/alerts?limit=1000", timeout=5).json()["alerts"]
            assert {a["id"] for a in alerts} == expected, "an alert was lost or a spurious one raised"
            _wait(lambda: expected <= {r.headers["Idempotency-Key"] for r in hook.received}, what="webhook deliveries")
        finally:
            second.send_signal(signal.SIGTERM)
            try:
                assert second.wait(30) == 0
            finally:
                if second.poll() is None:
                    second.kill()
        assert "Traceback" not in log_path.read_text(errors="replace"), log_path.read_text(errors="replace")[-3000:]
