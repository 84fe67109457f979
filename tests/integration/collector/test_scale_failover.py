"""Acceptance (issue 9): two ``toolwatch run`` members of one consumer group; SIGKILL one mid-stream.

The survivor takes over the dead member's partitions, restores its agents from the state changelog
(written at every offset commit) and goes on: every agent's baseline equals what one uninterrupted
pass of the detectors over the same input builds, and the alerts of both members' stores plus the
webhook deliveries are exactly the single-pass alert set (the same finding has the same alert id on
any member, so duplicates collapse by id).
"""

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
from helpers.otlp_calls import Call, request, workload
from helpers.webhook_receiver import WebhookReceiver
from toolwatch.collector.alerts import alert_id
from toolwatch.collector.receivers.state_changelog import StateChangelog
from toolwatch.collector.store import Store
from toolwatch.detectors.events import Batch, ToolCall
from toolwatch.detectors.new_tool import NewToolConfig, NewToolDetector

MIN_CALLS = 100
"""Longer than the spacing of new tools: a baseline that lost calls raises or misses alerts after failover."""
TOPIC, CHANGELOG, GROUP = "otlp_spans", "toolwatch_agent_state", "toolwatch"
AGENTS, CALLS_PER_AGENT = 8, 300  # agent-6 and agent-7 hash to partition 0, the others to 1


def _wait(pred, timeout=45.0, what="condition"):
    wait_until(pred, timeout, what)


def _metric(base: str, name: str, labels: str = "") -> float:
    try:
        text = requests.get(base + "/metrics", timeout=2).text
    except requests.RequestException:
        return -1.0
    sel = rf"\{{{re.escape(labels)}\}}" if labels else ""
    m = re.search(rf"^{re.escape(name)}{sel} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _alerts(base: str) -> int:
    try:
        return len(requests.get(base + "/api/v1/alerts?limit=1000", timeout=2).json()["alerts"])
    except (requests.RequestException, ValueError, KeyError):
        return 0


def _produce(bootstrap: str, calls: list[Call]) -> dict[int, int]:
    """Records of a few calls of one agent, agents interleaved as live traffic is; key = agent id."""
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    futures = []
    for i in range(0, len(calls), 12):
        for agent in sorted({c.agent for c in calls[i : i + 12]}):
            mine = [c for c in calls[i : i + 12] if c.agent == agent]
            futures.append(producer.send(TOPIC, key=agent.encode(), value=request(mine).SerializeToString()))
    producer.flush()
    ends: dict[int, int] = {}
    for fut in futures:
        md = fut.get(10)
        ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
    producer.close()
    return ends


def _committed(bootstrap: str, partitions: int) -> dict[int, int]:
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition(TOPIC, p)) or 0 for p in range(partitions)}
    finally:
        c.close()


def _member(tmp_path: Path, name: str, bootstrap: str, hook_url: str) -> tuple[Path, str]:
    port = free_port()
    cfg_path = tmp_path / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "otlp_http": "off",
        "otlp_grpc": "off",
        "listen": f"127.0.0.1:{port}",
        "data_dir": str(tmp_path / name),
        "webhooks": [{"url": hook_url, "secret": "s3cret"}],
        "pipeline": {"batch_max_size": 10, "batch_max_delay_ms": 50},
        "detectors": {"new_tool": {"min_calls": MIN_CALLS}},
        "kafka": {
            "enabled": True,
            "bootstrap_servers": bootstrap,
            "group_id": GROUP,
            "client_id": f"toolwatch-{name}",
            "state_changelog_topic": CHANGELOG,
            "max_poll_records": 2,
            "max_poll_interval_ms": 3000,  # tansu waits this long on every join; above it, a busy member is evicted
            "session_timeout_ms": 4000,
            "commit_interval_ms": 200,
        },
    }))
    return cfg_path, f"http://127.0.0.1:{port}"


def _start(cfg_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "toolwatch.cli", "run", "--config", str(cfg_path)], stdout=log, stderr=subprocess.STDOUT
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _single_pass(calls: list[Call]) -> tuple[set[str], NewToolDetector]:
    """What one uninterrupted daemon's new-tool detector alerts on (alert ids) and learns, on the same input."""
    det = NewToolDetector(NewToolConfig(min_calls=MIN_CALLS))
    batch = Batch(calls=[ToolCall(time_ns=c.time_ns, agent_id=c.agent, tool=c.tool, server=c.server, session_id=c.session,
                                  span_id=c.span_id.hex()) for c in calls])
    return {alert_id(f) for f in det.observe(batch)}, det


def _stored_ids(data_dir: Path) -> set[str]:
    store = Store(data_dir / "toolwatch.db")
    try:
        return {a.id for a in store.list_alerts(limit=10_000)}
    finally:
        store.close()


def test_sigkilled_member_agents_move_to_the_survivor_with_baselines_and_alerts_intact(tmp_path, kafka_broker):
    kafka_broker.create_topic(TOPIC, partitions=2)
    kafka_broker.create_topic(CHANGELOG, partitions=2)
    calls = workload(agents=AGENTS, calls_per_agent=CALLS_PER_AGENT, new_tool_every=25)
    expected, reference = _single_pass(calls)
    assert len(expected) == AGENTS * 8  # new tools at calls 100, 125, ..., 275: after the learning period
    split = len(calls) * 3 // 5

    with WebhookReceiver() as hook:
        cfg_a, api_a = _member(tmp_path, "a", kafka_broker.bootstrap, hook.url)
        cfg_b, api_b = _member(tmp_path, "b", kafka_broker.bootstrap, hook.url)
        a = _start(cfg_a, tmp_path / "a.log")
        b = _start(cfg_b, tmp_path / "b.log")
        try:
            _wait(lambda: _metric(api_a, "toolwatch_kafka_assigned_partitions") == 1
                  and _metric(api_b, "toolwatch_kafka_assigned_partitions") == 1, what="the group to split the partitions")
            ends = _produce(kafka_broker.bootstrap, calls[:split])
            assert len(ends) == 2, "all agents hashed to one partition; the test needs both"
            # Kill B mid-stream, once it has alerted and written agent state at a commit (no rebalance since).
            _wait(lambda: _metric(api_b, "toolwatch_kafka_state_agents_total", 'op="written"') >= 1
                  and _alerts(api_b) >= 1, what="B's first alert and state writes")
            b_seen = _metric(api_b, "toolwatch_spans_received_total", 'receiver="kafka"')
            b.send_signal(signal.SIGKILL)
            b.wait(10)
            b_committed = _committed(kafka_broker.bootstrap, 2)
            ends = _produce(kafka_broker.bootstrap, calls[split:])

            _wait(lambda: _metric(api_a, "toolwatch_kafka_assigned_partitions") == 2, what="A to take over B's partition")
            _wait(lambda: _committed(kafka_broker.bootstrap, 2) == ends, timeout=60, what="every record committed")
            restored = _metric(api_a, "toolwatch_kafka_state_agents_total", 'op="restored"')
            _wait(lambda: expected <= {r.headers["Idempotency-Key"] for r in hook.received}
                  | _stored_ids(tmp_path / "b"), what="webhook deliveries")
        finally:
            _stop(b)
            if a.poll() is None:
                a.send_signal(signal.SIGTERM)
                try:
                    assert a.wait(30) == 0
                finally:
                    _stop(a)
        delivered = {r.headers["Idempotency-Key"] for r in hook.received}

    assert b_seen < split, "B read everything before it was killed; the test proves nothing"
    assert 0 < sum(b_committed.values()) < sum(ends.values())
    assert restored >= 1, "the survivor restored no agent from the changelog"

    # No lost alert and no spurious one: the members' stores and the webhook deliveries, by alert id.
    stored_a, stored_b = _stored_ids(tmp_path / "a"), _stored_ids(tmp_path / "b")
    assert stored_b, "B raised no alert before it died; the test proves nothing about its alerts"
    assert stored_a | stored_b | delivered == expected
    assert delivered <= expected

    # Baselines intact: every agent's state (written by A at its graceful stop) equals the single pass.
    changelog = StateChangelog(CHANGELOG, lambda: None, lambda: KafkaConsumer(
        bootstrap_servers=kafka_broker.bootstrap, group_id=None, enable_auto_commit=False))
    records = changelog.read([0, 1])
    assert sorted(records) == sorted({c.agent for c in calls})
    for agent, record in records.items():
        assert record.detectors["new_tool"] == reference.snapshot_agent(agent), f"{agent}: new-tool baseline differs"
        assert record.detectors["new_tool"]["calls"] == CALLS_PER_AGENT
        assert record.detectors["sequence"]["n_calls"] == CALLS_PER_AGENT, f"{agent}: sequence call count differs"
    for name in ("a.log", "b.log"):  # kafka-python logs a harmless traceback of its own when a consumer closes
        text = (tmp_path / name).read_text(errors="replace")
        assert not re.search(r"ERROR +toolwatch|File \"[^\"]*/(collector|detectors)/", text), text[-3000:]
