"""``otlp_processes: auto`` (the default): one worker process with 2+ usable CPUs, else in-process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from toolwatch.collector.config import Config, ConfigError, config_from_mapping, load_config
from toolwatch.collector.otlp_processes import AUTO, choose_otlp_processes, usable_cpus

needs_affinity = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")


def test_the_default_is_auto_and_valid():
    cfg = Config()
    cfg.validate()
    assert cfg.otlp_processes == AUTO
    assert config_from_mapping({}).otlp_processes == AUTO
    assert load_config(environ={}).otlp_processes == AUTO


@pytest.mark.parametrize("cpus, processes", [(1, 0), (2, 1), (3, 1), (64, 1)])
def test_auto_runs_one_worker_when_two_cpus_are_usable(cpus, processes):
    choice = choose_otlp_processes(AUTO, cpus=cpus)
    assert choice.processes == processes
    assert f"{cpus} CPU" in choice.reason


@pytest.mark.parametrize("n", [0, 1, 2, 64])
def test_an_explicit_number_keeps_its_meaning_whatever_the_cpus(n):
    for cpus in (1, 2, 16):
        assert choose_otlp_processes(n, cpus=cpus).processes == n
        assert choose_otlp_processes(n, cpus=cpus, redact_args_given=True).processes == n


def test_auto_with_a_redactor_object_stays_in_the_daemon_and_says_why():
    choice = choose_otlp_processes(AUTO, cpus=8, redact_args_given=True)
    assert choice.processes == 0 and "redact_args" in choice.reason


@needs_affinity
def test_usable_cpus_is_this_process_affinity():
    assert usable_cpus() == len(os.sched_getaffinity(0))


@needs_affinity
def test_a_process_pinned_to_one_cpu_chooses_the_daemon_process():
    """The real affinity mask (as taskset or a cpuset sets it), in a child so this process keeps its own."""
    one = min(os.sched_getaffinity(0))
    code = ("from toolwatch.collector.otlp_processes import AUTO, choose_otlp_processes, usable_cpus\n"
            "print(usable_cpus(), choose_otlp_processes(AUTO).processes)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         preexec_fn=lambda: os.sched_setaffinity(0, {one}))
    assert out.stdout.split() == ["1", "0"]


@pytest.mark.parametrize("value, expected", [("auto", AUTO), ("AUTO", AUTO), (" auto ", AUTO), (0, 0), (3, 3),
                                             (2.0, 2), ("2", 2)])
def test_the_file_and_the_flag_accept_auto_or_a_whole_number(value, expected):
    assert config_from_mapping({"otlp_processes": value}).otlp_processes == expected
    assert load_config(environ={}, overrides={"otlp_processes": value}).otlp_processes == expected


@pytest.mark.parametrize("bad", ["two", "", "1.5", "-1", 1.5, True, None, [1], 65, -1])
def test_bad_values_name_the_key_and_what_is_allowed(bad):
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"otlp_processes": bad}).validate()
    assert str(err.value).startswith("otlp_processes: must be auto ")
    assert "0 to 64" in str(err.value) and repr(bad) in str(err.value)


@pytest.mark.parametrize("bad", ["two", "", "1.5", "-1", "65", "0x2", "²"])
def test_bad_flag_values_name_the_key_and_what_is_allowed(bad):
    with pytest.raises(ConfigError, match="^otlp_processes: must be auto .*0 to 64"):
        load_config(environ={}, overrides={"otlp_processes": bad})


def test_config_objects_take_auto_or_an_int_only():
    for bad in ("Auto", "2", 2.0, False):
        with pytest.raises(ConfigError, match="otlp_processes"):
            Config(otlp_processes=bad).validate()  # type: ignore[arg-type]
