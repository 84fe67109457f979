"""bench/workloads.py for tests: the bench's traffic (``fleet`` is what the detectors are tuned on),
loaded once and decoded as the daemon decodes it."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from toolwatch.collector import otlp
from toolwatch.collector.normalize import Normalizer
from toolwatch.detectors.events import ToolCall


@functools.cache
def workloads() -> ModuleType:
    """bench/workloads.py, which is not in a package: imported from its file, once per test run."""
    spec = importlib.util.spec_from_file_location(
        "bench_workloads_for_tests", Path(__file__).resolve().parents[2] / "bench" / "workloads.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def fleet_calls(spans: int, batch: int = 500, **bodies: Any) -> list[ToolCall]:
    """The calls of ``workloads().bodies("fleet", spans, batch, **bodies)``, decoded and normalised."""
    norm = Normalizer()
    calls: list[ToolCall] = []
    for body in workloads().bodies("fleet", spans, batch, **bodies):
        calls += norm.normalize(otlp.decode_export(body, otlp.PROTOBUF).request).calls
    return calls
