"""Fixtures for instrumentation integration tests: an OTLP sink, a tracer provider exporting to
it over real OTLP/HTTP, and a redactor (the real one when present, else the test double)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "helpers"))

from mcp_test_support import make_redactor  # noqa: E402
from otlp_sink import OtlpSink  # noqa: E402


@pytest.fixture
async def sink():
    s = await OtlpSink().start()
    yield s
    await s.stop()


@pytest.fixture
def redactor():
    return make_redactor()


@pytest.fixture
async def provider(sink):
    from toolwatch.instrumentation.mcp_client import setup_tracing

    p = setup_tracing("itest-agent", endpoint=sink.url, environ={})
    yield p
    await asyncio.to_thread(p.shutdown)
