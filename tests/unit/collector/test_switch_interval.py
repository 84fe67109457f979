"""``pipeline.switch_interval_ms``: set while the daemon runs, Python's restored after shutdown."""

from __future__ import annotations

import sys

import pytest

from toolwatch.collector.config import Config, ConfigError
from toolwatch.collector.daemon import Daemon


def _cfg(tmp_path, ms: float) -> Config:
    cfg = Config(otlp_http="off", otlp_grpc="off", listen="127.0.0.1:0", data_dir=str(tmp_path),
                 fingerprint_key="k", webhook_secret="s")
    cfg.pipeline.switch_interval_ms = ms
    cfg.validate()
    return cfg


@pytest.mark.parametrize("ms", [1.0, 0.0])
async def test_daemon_sets_the_switch_interval_while_it_runs(tmp_path, ms: float) -> None:
    before = sys.getswitchinterval()
    d = Daemon(_cfg(tmp_path, ms))
    await d.start()
    try:
        assert sys.getswitchinterval() == pytest.approx(ms / 1000 if ms else before)
    finally:
        await d.shutdown()
    assert sys.getswitchinterval() == before


def test_switch_interval_is_validated(tmp_path) -> None:
    with pytest.raises(ConfigError, match="switch_interval_ms"):
        _cfg(tmp_path, -1)
