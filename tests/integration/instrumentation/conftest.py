"""Fixtures for instrumentation integration tests: an OTLP sink, a tracer provider exporting to
it over real OTLP/HTTP, and a redactor (the real one when present, else the test double)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

HELPERS = Path(__file__).resolve().parents[2] / "helpers"
sys.path.insert(0, str(HELPERS))

from otlp_sink import OtlpSink  # noqa: E402
from redactor_double import RedactorDouble  # noqa: E402


def make_redactor():
    try:
        from toolwatch.instrumentation.redact import Redactor
    except ImportError:
        return RedactorDouble(b"integration-key")
    return Redactor(b"integration-key")


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


async def flush(provider) -> None:
    """force_flush blocks on the exporter, whose HTTP request needs this loop: run it off-loop."""
    await asyncio.to_thread(provider.force_flush)


def proxy_command(*proxy_args: str) -> list[str]:
    """argv of ``toolwatch proxy`` run through the CLI code path (with the test redactor when
    the real one is absent)."""
    try:
        import toolwatch.instrumentation.redact  # noqa: F401
    except ImportError:
        return [sys.executable, str(HELPERS / "proxy_with_double.py"), *proxy_args]
    return [sys.executable, "-m", "toolwatch.instrumentation.proxy", *proxy_args]
