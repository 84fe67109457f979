"""Scale-out groundwork: an agent's detector state moves with its partition through the changelog topic."""

from __future__ import annotations


from kafka import KafkaProducer

from helpers.procs import wait_until
from helpers.daemon import DaemonThread, make_config
from helpers.kafka_broker import kafka_broker  # noqa: F401  (fixture)
from helpers.otlp_calls import Call, request
from toolwatch.collector.config import KafkaConfig

AGENTS = ("agent-a", "agent-b", "agent-c", "agent-d")


def _wait(pred, timeout=40.0, what="condition"):
    wait_until(pred, timeout, what)


def produce(broker, first: int, last: int, new_tool_at: int | None = None) -> int:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    n = 0
    for i in range(first, last):
        for k, agent in enumerate(AGENTS):
            tool = "new_thing" if i == new_tool_at else ("read" if i % 2 else "list")
            producer.send("otlp_spans", key=agent.encode(), value=request([Call(agent, "fs", tool, i * 10 + k)]).SerializeToString())
            n += 1
    producer.flush()
    producer.close()
    return n


def config(tmp_path, name, broker):
    cfg = make_config(tmp_path / name, otlp_processes=0, kafka=KafkaConfig(
        enabled=True, bootstrap_servers=broker.bootstrap, max_poll_interval_ms=1000, session_timeout_ms=6000,
        commit_interval_ms=100, state_changelog_topic="toolwatch_agent_state"))
    cfg.detectors = {"new_tool": {"min_calls": 50}}
    return cfg


def calls_of(d, agent):
    st = next(x for x in d.daemon.detectors if x.name == "new_tool").snapshot_agent(agent)
    return None if st is None else st["calls"]


def test_a_joining_member_takes_over_partitions_with_their_agents_state(tmp_path, kafka_broker):
    kafka_broker.create_topic("otlp_spans", partitions=2)
    kafka_broker.create_topic("toolwatch_agent_state", partitions=2)
    total = produce(kafka_broker, 0, 60)
    with DaemonThread(config(tmp_path, "a", kafka_broker)) as a:
        rx_a = a.daemon.receiver("kafka")
        _wait(lambda: rx_a.committed_records == total, what="daemon A committed phase 1")
        with DaemonThread(config(tmp_path, "b", kafka_broker)) as b:
            rx_b = b.daemon.receiver("kafka")
            _wait(lambda: len(rx_a.assigned) == 1 and len(rx_b.assigned) == 1, what="the partitions to be shared")
            more = produce(kafka_broker, 60, 70, new_tool_at=65)
            _wait(lambda: rx_a.committed_records + rx_b.committed_records == total + more, what="phase 2 committed")
            moved = [ag for ag in AGENTS if calls_of(b, ag) is not None]
            stayed = [ag for ag in AGENTS if calls_of(a, ag) is not None]
            assert moved and stayed and sorted(moved + stayed) == sorted(AGENTS)  # each agent on exactly one member
            assert {calls_of(b, ag) for ag in moved} == {70} and {calls_of(a, ag) for ag in stayed} == {70}
            alerts = [x.agent_id for x in a.daemon.store.list_alerts() + b.daemon.store.list_alerts()]
            assert sorted(alerts) == sorted(AGENTS)  # one new-tool alert per agent, none lost, none twice
