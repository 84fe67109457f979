"""The retrainer reads an agent's window from its own thread while observe flushes staged rows
into the ring buffer: it must never see a window with rows missing (an empty window made the
first retrain of a busy agent fail with "ForestModel needs a 2-D training sample")."""

from __future__ import annotations

import sys
import threading

from toolwatch.detectors.features import N_FEATURES
from toolwatch.detectors.iforest_detector import ForestConfig, _Agent


def test_window_never_loses_rows_while_flushing() -> None:
    cfg = ForestConfig(max_rows=64, min_rows=8)
    row = [1.0] * N_FEATURES
    short: list[int] = []
    stop = threading.Event()
    agents: list[_Agent] = []

    def reader() -> None:
        while not stop.is_set():
            if agents:
                st = agents[-1]
                expected = st.n_buf  # read before: rows only ever get added
                got = len(st.window())
                if got < expected:
                    short.append(got)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(300):
            st = _Agent(cfg)
            agents.append(st)
            for _ in range(cfg.max_rows + 8):  # crosses the first flush
                st.add_rows([row])
            st.add_rows([row] * (cfg.max_rows + 1))  # the whole-window branch
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(old)
    assert not short, f"window() returned {len(short)} short windows, e.g. {short[:5]} rows"
