"""``pipeline.gc_young_threshold`` and ``pipeline.switch_interval_ms``: set while the daemon runs,
Python's own restored after shutdown."""

from __future__ import annotations

import gc
import sys

import pytest

from toolwatch.collector.config import Config, ConfigError
from toolwatch.collector.daemon import Daemon


def _cfg(tmp_path, ms: float = 0.0, gc_young: int = 50_000) -> Config:
    cfg = Config(otlp_http="off", otlp_grpc="off", listen="127.0.0.1:0", data_dir=str(tmp_path),
                 fingerprint_key="k", webhook_secret="s")
    cfg.pipeline.switch_interval_ms = ms
    cfg.pipeline.gc_young_threshold = gc_young
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


@pytest.mark.parametrize("young", [50_000, 1234, 0])
async def test_daemon_sets_the_young_gc_threshold_while_it_runs(tmp_path, young: int) -> None:
    before = gc.get_threshold()
    d = Daemon(_cfg(tmp_path, gc_young=young))
    await d.start()
    try:
        # only generation 0's threshold moves; 0 leaves Python's setting alone
        assert gc.get_threshold() == ((young or before[0]),) + before[1:]
    finally:
        await d.shutdown()
    assert gc.get_threshold() == before


def test_default_gc_threshold_is_raised() -> None:
    assert Config().pipeline.gc_young_threshold > gc.get_threshold()[0]


@pytest.mark.parametrize(("field", "value"), [("switch_interval_ms", -1), ("switch_interval_ms", 101),
                                              ("gc_young_threshold", -1), ("gc_young_threshold", 10**8)])
def test_settings_are_validated(tmp_path, field: str, value: float) -> None:
    kw = {"ms": value} if field == "switch_interval_ms" else {"gc_young": value}
    with pytest.raises(ConfigError, match=field):
        _cfg(tmp_path, **kw)
