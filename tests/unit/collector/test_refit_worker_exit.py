"""A refit worker whose daemon dies in the middle of a fit leaves at once and without a traceback:
it neither finishes a fit nobody will read nor fails writing the reply to a closed pipe."""

from __future__ import annotations

import os
import subprocess
import sys
import time

_PARENT = """
import sys, threading, numpy as np
from toolwatch.collector.refit_worker import RefitWorker
from toolwatch.detectors.iforest import ForestParams
if __name__ == "__main__":
    w = RefitWorker()
    w.fit(np.ones((4, 15)), ForestParams(n_estimators=1))
    print(w.pid, flush=True)
    sample = np.random.default_rng(0).normal(size=(2048, 15))
    # about 6 s of CPU here: the daemon is killed long before it ends
    threading.Thread(target=w.fit, args=(sample, ForestParams(n_estimators=6000)), daemon=True).start()
    sys.stdin.read()
"""


def _stat(pid: int) -> tuple[str, float] | None:
    """(state, user + system CPU seconds) of a process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_worker_whose_daemon_dies_mid_fit_exits_at_once_and_quietly(tmp_path) -> None:
    script = tmp_path / "daemon.py"  # a file, not -c: spawn re-imports the parent's __main__
    script.write_text(_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        idle = _stat(pid)
        assert idle is not None
        deadline = time.monotonic() + 60
        while True:  # the fit has begun once the worker uses CPU (it idles in recv_bytes before)
            now = _stat(pid)
            assert now is not None and time.monotonic() < deadline, "the worker never started fitting"
            if now[1] - idle[1] >= 0.2:
                break
            time.sleep(0.02)
    finally:
        parent.kill()
    at_kill = last = now[1]
    deadline = time.monotonic() + 60
    while (st := _stat(pid)) is not None:
        last = st[1]  # sampled while it lives: once reaped, its CPU time cannot be read
        if st[0] == "Z":
            break
        assert time.monotonic() < deadline, "the worker outlived its daemon by a minute"
        time.sleep(0.01)
    _, err = parent.communicate(timeout=60)  # the worker's stderr is the daemon's: EOF once both are gone
    # Finishing the fit would take seconds of CPU more; CPU, not wall time, so a busy machine agrees.
    assert last - at_kill < 1.0, f"the worker went on fitting for {last - at_kill:.2f} s of CPU"
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
