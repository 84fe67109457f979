"""``cpu_affinity``: parsing, the ``auto`` choice, and pinning real threads (and giving their masks back)."""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolwatch.collector.config import ConfigError, config_from_mapping, load_config
from toolwatch.collector.cpu_affinity import (
    AffinityChoice,
    ThreadAffinity,
    _cpulist,
    choose_cpu_affinity,
    parse_cpu_affinity,
)

ALLOWED = sorted(os.sched_getaffinity(0))
two_cpus = pytest.mark.skipif(len(ALLOWED) < 2, reason="pinning apart needs a process allowed on 2+ CPUs")


@given(st.sets(st.integers(0, 300), min_size=1, max_size=40))
def test_cpulist_text_parses_back_to_the_same_cpus(cpus: set[int]) -> None:
    assert parse_cpu_affinity(_cpulist(cpus)) == tuple(sorted(cpus))


@given(st.text(max_size=12))
def test_any_text_is_a_setting_or_an_error_naming_the_key(text: str) -> None:
    try:
        got = parse_cpu_affinity(text)
    except ValueError as exc:
        assert str(exc).startswith("cpu_affinity: ")
    else:
        assert got in ("auto", "off") or (isinstance(got, tuple) and got and all(c >= 0 for c in got))


@pytest.mark.parametrize("value, want", [
    ("auto", "auto"), (" OFF ", "off"), (False, "off"), (3, (3,)), ([3, 1, 3], (1, 3)), ("0-2,5", (0, 1, 2, 5)),
    ("7", (7,)),
])
def test_accepted_forms(value, want) -> None:
    assert parse_cpu_affinity(value) == want


@pytest.mark.parametrize("value", ["", "on", "1-", "3-1", "-1", "1,,2", "a", True, 1.5, [], [1, "2"], [-1], {"cpu": 1},
                                   "0-99999"])
def test_rejected_forms_name_the_key(value) -> None:
    with pytest.raises(ValueError, match="^cpu_affinity: must be auto"):
        parse_cpu_affinity(value)


def test_auto_pins_the_highest_cpu_only_with_helpers_and_two_cpus() -> None:
    choice = choose_cpu_affinity("auto", helpers=True, allowed={0, 1, 2, 3}, usable=4)
    assert choice.cpus == frozenset({3}) and "CPU 3" in choice.reason and "0-3" in choice.reason
    assert choose_cpu_affinity("auto", helpers=False, allowed={0, 1}, usable=2).cpus is None
    assert choose_cpu_affinity("auto", helpers=True, allowed={5}, usable=1).cpus is None
    # a 1-CPU quota on a 4-CPU mask: the helpers would only take the daemon's CPU time
    assert "only 1 CPU" in choose_cpu_affinity("auto", helpers=True, allowed={0, 1, 2, 3}, usable=1).reason
    assert choose_cpu_affinity("off", helpers=True, allowed={0, 1}, usable=2).cpus is None


def test_explicit_cpus_must_be_ones_the_process_may_use() -> None:
    assert choose_cpu_affinity((1, 2), helpers=False, allowed={0, 1, 2}).cpus == frozenset({1, 2})
    with pytest.raises(ValueError, match=r"cpu_affinity: CPU 4,7 is not one .* \(allowed: 0-2\)"):
        choose_cpu_affinity((1, 4, 7), helpers=True, allowed={0, 1, 2})


def test_config_file_flag_and_validation(tmp_path) -> None:
    assert config_from_mapping({"cpu_affinity": "off"}).cpu_affinity == "off"
    assert config_from_mapping({"cpu_affinity": False}).cpu_affinity == "off"  # YAML's bare off
    with pytest.raises(ConfigError, match="^cpu_affinity: must be auto"):
        config_from_mapping({"cpu_affinity": "fast"})
    path = tmp_path / "c.yaml"
    path.write_text(f"cpu_affinity: {ALLOWED[-1]}\ndata_dir: {tmp_path}\n")
    assert load_config(str(path), environ={}).cpu_affinity == (ALLOWED[-1],)
    assert load_config(str(path), environ={}, overrides={"cpu_affinity": "auto"}).cpu_affinity == "auto"
    path.write_text(f"cpu_affinity: {max(ALLOWED) + 1}\ndata_dir: {tmp_path}\n")
    with pytest.raises(ConfigError, match=f"cpu_affinity: CPU {max(ALLOWED) + 1} is not one this process may run on"):
        load_config(str(path), environ={})


def _mask(tid: int) -> set[int]:
    return set(os.sched_getaffinity(tid))


def _in_thread(fn):
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


@two_cpus
def test_pins_the_applying_thread_and_its_new_threads_not_others_and_restores() -> None:
    cpu = ALLOWED[-1]
    aff = ThreadAffinity(AffinityChoice(frozenset({cpu}), "test"))
    before = _mask(0)
    seen: dict[str, object] = {}
    go, done = threading.Event(), threading.Event()
    started_since: list[int] = []

    def bystander() -> None:  # a thread of the process that exists before: left alone
        go.wait()
        seen["bystander"] = _mask(0)
        done.wait()

    def daemon_thread() -> None:
        aff.apply()
        seen["applied"] = _mask(0)
        seen["child"] = _in_thread(lambda: (started_since.append(threading.get_native_id()), _mask(0))[1])
        with aff.released():
            seen["released"] = _mask(0)
            seen["child_of_released"] = _in_thread(lambda: _mask(0))
        seen["after_release"] = _mask(0)
        keeper = threading.Event()
        t = threading.Thread(target=keeper.wait)
        t.start()  # still running at restore: it was pinned since, so it is given the old mask too
        seen["kept_tid"] = t.native_id
        go.set()
        aff.restore()
        seen["restored"] = _mask(0)
        seen["kept_after_restore"] = _mask(t.native_id)
        keeper.set()
        t.join()

    other = threading.Thread(target=bystander)
    other.start()
    worker = threading.Thread(target=daemon_thread)
    worker.start()
    worker.join()
    done.set()
    other.join()
    assert seen["applied"] == {cpu} and seen["child"] == {cpu}
    assert seen["released"] == before and seen["child_of_released"] == before  # a process started here escapes
    assert seen["after_release"] == {cpu}
    assert seen["bystander"] == before and _mask(0) == before
    assert seen["restored"] == before and seen["kept_after_restore"] == before
    assert not aff.pinned


def test_off_changes_nothing() -> None:
    aff = ThreadAffinity(AffinityChoice(None, "off"))
    before = _mask(0)
    aff.apply()
    with aff.released():
        assert _mask(0) == before
    aff.restore()
    assert _mask(0) == before and not aff.pinned


@two_cpus
def test_released_leaves_an_unpinned_thread_alone() -> None:
    aff = ThreadAffinity(AffinityChoice(frozenset({ALLOWED[-1]}), "test"))
    _in_thread(aff.apply)  # pinned some other thread
    before = _mask(0)
    with aff.released():
        assert _mask(0) == before
    assert _mask(0) == before
    aff.restore()


def test_a_pin_the_os_refuses_leaves_the_thread_as_it_was_and_says_why(caplog) -> None:
    gone = max(ALLOWED) + 1  # a CPU this process may not use: sched_setaffinity answers EINVAL
    aff = ThreadAffinity(AffinityChoice(frozenset({gone}), "test"))
    before = _mask(0)
    with caplog.at_level("WARNING", logger="toolwatch.cpu_affinity"):
        _in_thread(aff.apply)
    assert not aff.pinned and _mask(0) == before
    assert f"could not keep the daemon's threads on CPU {gone}" in caplog.text
    aff.restore()
