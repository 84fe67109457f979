"""The OTLP worker process's event loop: uvloop where it is installed (a cheaper loop per request)."""

from __future__ import annotations

import asyncio

import pytest

from toolwatch.collector.receivers import otlp_worker_main


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_the_worker_runs_on_uvloop_where_installed():
    uvloop = pytest.importorskip("uvloop")
    assert otlp_worker_main.run(_loop_type()) is uvloop.Loop


def test_the_worker_runs_on_the_default_loop_without_uvloop(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert not otlp_worker_main.run(_loop_type()).__module__.startswith("uvloop")
