"""Refits in the worker process (collector/refit_worker.py) give exactly the in-process models;
a dead worker costs one refit, never the old model; closing leaves no process behind."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import resource
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import conformance as C
from toolwatch.collector.refit_worker import (RefitWorker, RefitWorkerDied, decode_reply, decode_request,
                                              encode_model, encode_request)
from toolwatch.collector.retrain import Retrainer
from toolwatch.detectors.events import Batch
from toolwatch.detectors.features import N_FEATURES
from toolwatch.detectors.iforest import ForestModel, ForestParams
from toolwatch.detectors.iforest_detector import ForestConfig, IsolationForestDetector


@pytest.fixture(scope="module")
def worker():
    w = RefitWorker()
    yield w
    w.close()


def _alive(pid: int) -> bool:
    """True while a process with this pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def assert_same_model(a: ForestModel, b: ForestModel, probe: np.ndarray) -> None:
    fa, fb = a.fitted_arrays(), b.fitted_arrays()
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == fb[k].dtype and fa[k].shape == fb[k].shape, k
        assert fa[k].tobytes() == fb[k].tobytes(), k
    for x, y in zip(a.margins(probe), b.margins(probe)):
        assert x.tobytes() == y.tobytes()
    assert a.explain(probe[0], [f"f{i}" for i in range(N_FEATURES)]) == \
        b.explain(probe[0], [f"f{i}" for i in range(N_FEATURES)])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(2, 400), trees=st.integers(1, 40), max_samples=st.integers(2, 300),
       seed=st.integers(0, 2**31 - 1), rate=st.sampled_from([0.001, 0.01, 0.2]), ints=st.booleans())
def test_worker_fit_is_bit_identical_to_an_in_process_fit(worker, n, trees, max_samples, seed, rate, ints) -> None:
    rng = np.random.default_rng(seed)
    sample = rng.normal(size=(n, N_FEATURES)) * rng.uniform(0.1, 100, N_FEATURES)
    if ints:  # counts and flags: many ties, constant columns
        sample = np.round(sample) * (rng.uniform(size=N_FEATURES) > 0.3)
    params = ForestParams(n_estimators=trees, max_samples=max_samples, random_state=seed % 1000,
                          target_alert_rate=rate)
    probe = np.concatenate([sample[:50], rng.normal(size=(50, N_FEATURES)) * 50])
    assert_same_model(worker.fit(sample, params), ForestModel(sample, params), probe)


def test_messages_round_trip_without_pickle() -> None:
    rng = np.random.default_rng(3)
    sample, params = rng.normal(size=(80, N_FEATURES)), ForestParams(n_estimators=7, random_state=4)
    got, p = decode_request(encode_request(sample, params))
    assert p == params and got.tobytes() == sample.tobytes()
    model = ForestModel(sample, params)
    back = decode_reply(encode_model(model), params)
    assert back.forest is None
    assert_same_model(back, model, rng.normal(size=(30, N_FEATURES)))
    evil = io.BytesIO()
    np.savez(evil, __meta__=np.frombuffer(b"{}", dtype=np.uint8), nodes=np.array([{}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):  # an object array is never unpickled
        decode_reply(evil.getvalue(), params)


def _cfg(**kw) -> ForestConfig:
    base = dict(forest=ForestParams(n_estimators=30, max_samples=64), min_rows=60, max_rows=256,
                retrain_every=200, group_retrain_every=400, warm_calls=20, session_idle_s=120)
    base.update(kw)
    return ForestConfig(**base)


def _traffic() -> list:
    calls = []
    for i, agent in enumerate(["a", "b", "c", "d"]):
        calls += C.routine_traffic(agent, 60, start_ns=C.T0 + i * 7 * C.S, seed=i)
    calls.sort(key=lambda c: c.time_ns)
    rng = np.random.default_rng(9)
    for c in rng.choice(len(calls), 25, replace=False):  # some odd calls among them
        calls[c].result_bytes = int(rng.integers(10**6, 10**8))
    late = C.routine_traffic("late", 30, start_ns=C.T0 + 10**5 * C.S, seed=7)
    odd = C.session_calls("late", "odd", ["fs/list_dir", "fs/read_file"], C.T0 + 10**6 * C.S)
    odd[1].result_bytes = 50_000_000
    return calls + late + odd


def test_detector_findings_and_snapshots_are_identical_with_the_worker(worker) -> None:
    ref = IsolationForestDetector(_cfg())
    alt = IsolationForestDetector(_cfg())
    alt.fitter = worker.fit
    calls = _traffic()
    for i in range(0, len(calls), 64):
        batch = Batch(calls=calls[i : i + 64])
        f_ref, m_ref = ref.observe_scored(batch)
        f_alt, m_alt = alt.observe_scored(batch)
        assert [f.to_dict() for f in f_alt] == [f.to_dict() for f in f_ref]
        assert m_alt.tobytes() == m_ref.tobytes()
    assert len(ref._models) >= 5 and set(alt._models) == set(ref._models)
    assert alt.snapshot() == ref.snapshot()


def test_a_worker_dying_mid_fit_keeps_the_old_model_and_the_refit_is_retried(worker, caplog) -> None:
    det = IsolationForestDetector(_cfg(auto_retrain=False, forest=ForestParams(n_estimators=3000, max_samples=256)))
    C.feed(det, C.routine_traffic("a", 40))
    det._models["a"] = old = ForestModel(det._state["a"].window(), ForestParams(n_estimators=5))
    det._state["a"].since_fit = since = 500
    det.fitter = worker.fit
    worker.fit(np.ones((4, N_FEATURES)), ForestParams(n_estimators=1))  # the worker is up
    pid, starts = worker.pid, worker.starts
    killer = threading.Timer(0.5, os.kill, (pid, 9))
    killer.start()
    rt = Retrainer([det], max_share=1.0)

    async def run() -> None:
        with caplog.at_level(logging.ERROR, "toolwatch.retrain"):
            await rt._run([(det, ["a"])])

    t0 = time.monotonic()
    asyncio.run(run())
    killer.join()
    assert time.monotonic() - t0 < 20
    assert det._models["a"] is old and det._state["a"].since_fit == since
    assert "a" in det.needs_retrain()
    assert any("died mid-fit" in r.getMessage() and str(pid) in r.getMessage() for r in caplog.records)
    assert not _alive(pid)
    det.config = _cfg(auto_retrain=False)  # a quick refit this time, in a new worker
    assert det.retrain(["a"]) == ["a"]
    assert det._models["a"] is not old and worker.starts == starts + 1 and worker.pid != pid


def test_fit_raises_died_when_the_pipe_breaks(worker) -> None:
    worker.fit(np.ones((4, N_FEATURES)), ForestParams(n_estimators=1))
    pid = worker.pid
    threading.Timer(0.3, os.kill, (pid, 9)).start()
    with pytest.raises(RefitWorkerDied, match=f"process {pid} died mid-fit"):
        worker.fit(np.random.default_rng(0).normal(size=(2048, N_FEATURES)), ForestParams(n_estimators=4000))


def test_close_stops_the_worker_and_later_fits_run_in_process() -> None:
    w = RefitWorker()
    w.fit(np.ones((4, N_FEATURES)), ForestParams(n_estimators=1))
    pid = w.pid
    assert pid is not None and _alive(pid)
    w.close()
    assert not _alive(pid) and w.pid is None
    rng = np.random.default_rng(1)
    sample, params = rng.normal(size=(50, N_FEATURES)), ForestParams(n_estimators=5)
    assert w.fit(sample, params).forest is not None and w.pid is None  # in-process, no new worker


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a live process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def test_a_closed_worker_exits_without_the_cost_of_a_full_interpreter_exit(caplog) -> None:
    """The worker runs at nice +10; a normal interpreter exit after sklearn's imports costs it about
    0.25 s of CPU, which on a loaded machine took longer than the 5 s ``join_timeout_s``: ``close``
    then logged "did not exit; terminating it" and killed it. Measured in CPU time (what the worker
    must be given to exit), not wall time, so the test means the same on a busy machine."""
    w = RefitWorker()
    w.fit(np.ones((4, N_FEATURES)), ForestParams(n_estimators=1))
    pid = w.pid
    before = _children_cpu_s() + _cpu_s(pid)  # the worker idles in recv_bytes: its CPU stays put
    with caplog.at_level(logging.INFO, "toolwatch.refit_worker"):
        w.close()
    exit_cpu = _children_cpu_s() - before  # what reaping it added beyond its life so far: its exit
    assert not _alive(pid)
    assert exit_cpu < 0.08, f"the worker took {exit_cpu:.3f} s of CPU to exit"
    messages = [r.getMessage() for r in caplog.records]
    assert f"refit worker process {pid} stopped (exit code 0)" in messages
    assert not any("did not exit" in m for m in messages)


def test_a_worker_that_cannot_start_falls_back_to_in_process_fits(monkeypatch, caplog) -> None:
    w = RefitWorker()

    def no_process() -> None:
        raise OSError("Resource temporarily unavailable")

    monkeypatch.setattr(w, "_start", no_process)
    rng = np.random.default_rng(2)
    sample, params = rng.normal(size=(70, N_FEATURES)), ForestParams(n_estimators=9)
    with caplog.at_level(logging.ERROR, "toolwatch.refit_worker"):
        got = w.fit(sample, params)
    assert w.in_process and got.forest is not None
    assert_same_model(got, ForestModel(sample, params), rng.normal(size=(20, N_FEATURES)))
    assert any("could not be started" in r.getMessage() and "in the daemon's process" in r.getMessage()
               for r in caplog.records)


def test_a_stuck_worker_is_killed_after_the_fit_timeout() -> None:
    w = RefitWorker()
    try:
        w.fit(np.ones((4, N_FEATURES)), ForestParams(n_estimators=1))  # start-up and imports: not timed here
        w.fit_timeout_s = 0.3
        pid = w.pid
        with pytest.raises(RefitWorkerDied, match=f"process {pid} did not answer in 0.3 s"):
            w.fit(np.random.default_rng(0).normal(size=(2048, N_FEATURES)), ForestParams(n_estimators=4000))
        assert not _alive(pid) and w.pid is None
    finally:
        w.close()


def test_the_worker_exits_when_its_parent_is_killed() -> None:
    """No orphan even when the daemon gets no chance to shut down (SIGKILL): the worker reads EOF."""
    script = ("import sys, numpy as np\n"
              "from toolwatch.collector.refit_worker import RefitWorker\n"
              "from toolwatch.detectors.iforest import ForestParams\n"
              "w = RefitWorker()\n"
              "w.fit(np.ones((4, 15)), ForestParams(n_estimators=1))\n"
              "print(w.pid, flush=True)\n"
              "sys.stdin.read()\n")
    with subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as parent:
        try:
            pid = int(parent.stdout.readline())
            assert _alive(pid)
        finally:
            parent.kill()
            parent.wait(10)
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def test_abort_ends_a_fit_in_flight_at_once_and_later_fits_are_dropped_too() -> None:
    """``abort`` is the shutdown's way out of a refit it cannot wait for: the fit raises now."""
    w = RefitWorker()
    try:
        w.fit(np.ones((4, N_FEATURES)), ForestParams(n_estimators=1))
        pid = w.pid
        threading.Timer(0.3, w.abort).start()
        t0 = time.monotonic()
        with pytest.raises(RefitWorkerDied, match=f"process {pid} was stopped mid-fit by the daemon's shutdown"):
            w.fit(np.random.default_rng(0).normal(size=(2048, N_FEATURES)), ForestParams(n_estimators=4000))
        assert time.monotonic() - t0 < 20
        assert not _alive(pid) and w.pid is None
        with pytest.raises(RefitWorkerDied, match="stopped by the daemon's shutdown; this refit is dropped"):
            w.fit(np.random.default_rng(1).normal(size=(50, N_FEATURES)), ForestParams(n_estimators=5))
        assert w.pid is None  # no new worker after an abort, and no fit in the daemon's process either
    finally:
        w.close()


def test_abort_kills_a_worker_that_does_not_exit_on_sigterm(monkeypatch, caplog) -> None:
    """The worker has no SIGTERM handler, so Linux ends it on SIGTERM even when it is stopped; one in
    uninterruptible sleep would not exit: that SIGTERM is left out here (the worker is real)."""
    w = RefitWorker(abort_grace_s=0.5)
    try:
        w.fit(np.ones((4, N_FEATURES)), ForestParams(n_estimators=1))
        pid = w.pid
        monkeypatch.setattr(w._proc, "terminate", lambda: None)
        with caplog.at_level(logging.WARNING, "toolwatch.refit_worker"):
            w.abort()
        w.close()
        assert not _alive(pid) and w.pid is None
        assert f"refit worker process {pid} did not exit on SIGTERM in 0.5 s; killing it" in caplog.text
    finally:
        w.close()


def test_a_stopped_retrainer_starts_no_refit_and_aborts_the_one_in_flight(worker, caplog) -> None:
    det = IsolationForestDetector(_cfg(auto_retrain=False, forest=ForestParams(n_estimators=3000, max_samples=256)))
    C.feed(det, C.routine_traffic("a", 40))
    det._models["a"] = old = ForestModel(det._state["a"].window(), ForestParams(n_estimators=5))
    det._state["a"].since_fit = since = 500
    w = RefitWorker()
    det.fitter = w.fit
    rt = Retrainer([det], max_share=1.0, stop_grace_s=0.2, abort=w.abort)

    async def run() -> None:
        rt(Batch(), [])
        assert rt._task is not None
        await asyncio.sleep(0.5)  # the fit is with the worker (its start-up alone takes longer)
        with caplog.at_level(logging.WARNING, "toolwatch.retrain"):
            await asyncio.wait_for(rt.shutdown(), 30)
        rt(Batch(), [])  # a batch drained after the stop: no new run
        assert rt._task is None

    try:
        asyncio.run(run())
        assert det._models["a"] is old and det._state["a"].since_fit == since and rt.fitted == 0
        assert "a model refit is still running 0.2 s into the shutdown" in caplog.text
        assert any(r.levelno == logging.WARNING and "stopped mid-fit by the daemon's shutdown" in r.getMessage()
                   for r in caplog.records)
    finally:
        w.close()
