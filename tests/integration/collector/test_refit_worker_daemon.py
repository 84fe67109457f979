"""The daemon fits IsolationForest models in its refit worker process by default, and its shutdown
stops that process (no orphan); ``pipeline.refit_in_process`` keeps fits in the daemon's process."""

from __future__ import annotations

import numpy as np

from helpers.daemon import DaemonThread, make_config
from toolwatch.detectors.features import N_FEATURES
from toolwatch.detectors.iforest import ForestModel
from toolwatch.detectors.iforest_detector import IsolationForestDetector


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_daemon_refits_in_its_worker_and_stops_it_on_shutdown(tmp_path) -> None:
    with DaemonThread(make_config(tmp_path, otlp_processes=0)) as d:
        worker = d.daemon.refit_worker
        forests = [x for x in d.daemon.detectors if isinstance(x, IsolationForestDetector)]
        assert worker is not None and forests and all(f.fitter == worker.fit for f in forests)
        assert worker.pid is None  # started lazily, on the first refit
        sample = np.random.default_rng(0).normal(size=(300, N_FEATURES))
        model = forests[0].fitter(sample, forests[0].config.forest)
        pid = worker.pid
        assert model.forest is None and pid is not None and _alive(pid)
    assert not _alive(pid) and worker.pid is None


def test_refit_in_process_keeps_fits_in_the_daemons_process(tmp_path) -> None:
    cfg = make_config(tmp_path, otlp_processes=0)
    cfg.pipeline.refit_in_process = True
    with DaemonThread(cfg) as d:
        assert d.daemon.refit_worker is None
        forests = [x for x in d.daemon.detectors if isinstance(x, IsolationForestDetector)]
        assert forests and all(f.fitter is ForestModel for f in forests)
