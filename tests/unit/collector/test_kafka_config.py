"""The ``kafka:`` config section: file, environment, flag, and errors that name the key."""

from __future__ import annotations

import pytest

from toolwatch.collector.config import ConfigError, load_config


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_defaults_are_off_and_match_the_collector_exporter():
    cfg = load_config(None, environ={})
    assert not cfg.kafka.enabled
    assert (cfg.kafka.topic, cfg.kafka.encoding, cfg.kafka.group_id) == ("otlp_spans", "otlp_proto", "toolwatch")


def test_file_env_and_flag_precedence(tmp_path):
    path = write(tmp_path, "kafka:\n  enabled: true\n  bootstrap_servers: a:9092\n  topic: spans\n  encoding: otlp_json\n")
    cfg = load_config(path, environ={})
    assert (cfg.kafka.enabled, cfg.kafka.bootstrap_servers, cfg.kafka.topic, cfg.kafka.encoding) == (True, "a:9092", "spans", "otlp_json")
    cfg = load_config(path, environ={"TOOLWATCH_KAFKA_TOPIC": "t2", "TOOLWATCH_KAFKA_DEAD_LETTER_TOPIC": "dlq"})
    assert (cfg.kafka.topic, cfg.kafka.dead_letter_topic) == ("t2", "dlq")
    cfg = load_config(None, environ={"TOOLWATCH_KAFKA_BOOTSTRAP": "b:1,c:2"})
    assert cfg.kafka.enabled and cfg.kafka.bootstrap_servers == "b:1,c:2"
    cfg = load_config(None, environ={"TOOLWATCH_KAFKA_BOOTSTRAP": "b:1"}, overrides={"kafka_bootstrap": "d:3"})
    assert cfg.kafka.enabled and cfg.kafka.bootstrap_servers == "d:3"


@pytest.mark.parametrize(
    "yaml_text, needle",
    [
        ("kafka:\n  enabled: true\n  bootstrap_servers: nope\n", "kafka.bootstrap_servers"),
        ("kafka:\n  enabled: true\n  encoding: jaeger_proto\n", "kafka.encoding"),
        ("kafka:\n  enabled: true\n  dead_letter_topic: otlp_spans\n", "kafka.dead_letter_topic"),
        ("kafka:\n  enabled: true\n  commit_interval_ms: 0\n", "kafka.commit_interval_ms"),
        ("kafka:\n  enabled: yes please\n", "kafka.enabled"),
        ("kafka:\n  brokers: a:1\n", "kafka: unknown key(s) brokers"),
    ],
)
def test_errors_name_the_key(tmp_path, yaml_text, needle):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, yaml_text), environ={})
    assert needle in str(info.value)


def test_run_flag_is_parsed():
    from toolwatch.cli import build_parser

    args = build_parser().parse_args(["run", "--kafka-bootstrap", "k:9092"])
    assert args.kafka_bootstrap == "k:9092"
