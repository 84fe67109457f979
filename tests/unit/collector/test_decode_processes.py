"""``kafka.decode_processes: auto`` (the default): one decode worker with 2+ usable CPUs, else the consumer thread."""

from __future__ import annotations

import pytest

from toolwatch.collector.config import Config, ConfigError, KafkaConfig, config_from_mapping, load_config
from toolwatch.collector.otlp_processes import AUTO, choose_decode_processes


def _kafka(**kw) -> dict:
    return {"kafka": {"enabled": True, "bootstrap_servers": "127.0.0.1:9092", **kw}}


def test_the_default_is_auto_and_valid():
    assert KafkaConfig().decode_processes == AUTO
    assert config_from_mapping(_kafka()).kafka.decode_processes == AUTO
    assert load_config(environ={}).kafka.decode_processes == AUTO


@pytest.mark.parametrize("cpus, processes", [(1, 0), (2, 1), (8, 1)])
def test_auto_runs_one_worker_when_two_cpus_are_usable(cpus, processes):
    choice = choose_decode_processes(AUTO, cpus=cpus)
    assert choice.processes == processes and f"{cpus} CPU" in choice.reason and "Kafka" in choice.reason


def test_an_explicit_number_is_kept_and_auto_with_a_redactor_object_stays_in_the_consumer_thread():
    assert choose_decode_processes(3, cpus=1, redact_args_given=True).processes == 3
    choice = choose_decode_processes(AUTO, cpus=8, redact_args_given=True)
    assert choice.processes == 0 and "redact_args" in choice.reason


@pytest.mark.parametrize("value, expected", [("auto", AUTO), (" AUTO ", AUTO), (0, 0), (2, 2), (2.0, 2), ("4", 4)])
def test_the_file_accepts_auto_or_a_whole_number(value, expected):
    assert config_from_mapping(_kafka(decode_processes=value)).kafka.decode_processes == expected


@pytest.mark.parametrize("bad", ["two", "", "1.5", 1.5, True, None, [1], 65, -1])
def test_bad_values_name_the_key_and_what_is_allowed(bad):
    with pytest.raises(ConfigError) as err:
        config_from_mapping(_kafka(decode_processes=bad)).validate()
    assert str(err.value).startswith("kafka.decode_processes: must be auto ")
    assert "0 to 64" in str(err.value) and repr(bad) in str(err.value)


def test_config_objects_take_auto_or_an_int_only():
    for bad in ("Auto", "2", 2.0, False, 65):
        cfg = Config(kafka=KafkaConfig(enabled=True, decode_processes=bad))  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="kafka.decode_processes"):
            cfg.validate()


def test_a_redactor_object_cannot_reach_decode_workers(tmp_path):
    from toolwatch.collector.daemon import Daemon
    from toolwatch.collector.normalize import drop_raw_args

    cfg = Config(otlp_http="off", otlp_grpc="off", listen="127.0.0.1:0", data_dir=str(tmp_path),
                 kafka=KafkaConfig(enabled=True, decode_processes=1))
    with pytest.raises(ValueError, match="redact_args cannot be used with kafka.decode_processes"):
        Daemon(cfg, redact_args=drop_raw_args)
    cfg.kafka.decode_processes = AUTO  # auto decodes in the consumer thread then
    d = Daemon(cfg, redact_args=drop_raw_args)
    assert d.decode_processes == 0
    d.store.close()
