"""``otlp_processes: auto`` (the default): one worker process with 2+ usable CPUs, else in-process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from toolwatch.collector.config import Config, ConfigError, config_from_mapping, load_config
from toolwatch.collector.otlp_processes import AUTO, cgroup_cpu_quota, choose_otlp_processes, usable_cpus

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
def test_usable_cpus_is_this_process_affinity_without_a_cpu_quota(tmp_path):
    (tmp_path / "cgroup").write_text("0::/\n")
    assert usable_cpus(tmp_path, tmp_path / "cgroup") == len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path, tmp_path / "no-such-file") == len(os.sched_getaffinity(0))


def _v2(root, path: str, cpu_max: dict[str, str]) -> None:
    for where, text in cpu_max.items():
        (root / where).mkdir(parents=True, exist_ok=True)
        (root / where / "cpu.max").write_text(text)
    (root / "self-cgroup").write_text(f"0::{path}\n")


@pytest.mark.parametrize("cpu_max, quota", [
    ({"k8s/pod": "100000 100000"}, 1.0),                     # docker --cpus 1 / limits.cpu: 1
    ({"k8s/pod": "150000 100000"}, 1.5),
    ({"k8s/pod": "max 100000"}, None),                        # no limit
    ({"k8s": "50000 100000", "k8s/pod": "max 100000"}, 0.5),  # a parent's limit binds the child
    ({"k8s/pod": "400000 100000", "k8s": "200000 100000"}, 2.0),
    ({"k8s/pod": "garbage"}, None),
    ({"k8s/pod": "100000 0"}, None),
])  # fmt: skip
def test_a_cgroup_v2_cpu_quota_is_read_along_the_path(tmp_path, cpu_max, quota):
    _v2(tmp_path, "/k8s/pod", cpu_max)
    assert cgroup_cpu_quota(tmp_path, tmp_path / "self-cgroup") == quota


def test_a_cgroup_v1_cfs_quota_is_read_on_the_cpu_controller(tmp_path):
    cpu = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("100000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "self-cgroup").write_text("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    assert cgroup_cpu_quota(tmp_path, tmp_path / "self-cgroup") == 1.0
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert cgroup_cpu_quota(tmp_path, tmp_path / "self-cgroup") is None


@needs_affinity
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2+ CPUs")
def test_a_one_cpu_quota_over_two_cores_makes_auto_stay_in_process(tmp_path):
    """``docker --cpus 1`` leaves the affinity at every core; the quota is what limits the process."""
    _v2(tmp_path, "/", {".": "100000 100000"})
    cpus = usable_cpus(tmp_path, tmp_path / "self-cgroup")
    assert cpus == 1
    assert choose_otlp_processes(AUTO, cpus=cpus).processes == 0
    _v2(tmp_path, "/", {".": "250000 100000"})
    assert usable_cpus(tmp_path, tmp_path / "self-cgroup") == min(2, len(os.sched_getaffinity(0)))


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
