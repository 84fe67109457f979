"""Shared helpers for the instrumentation integration tests."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from redactor_double import RedactorDouble

HELPERS = Path(__file__).resolve().parent


def real_redactor_available() -> bool:
    try:
        import toolwatch.instrumentation.redact  # noqa: F401
    except ImportError:
        return False
    return True


def make_redactor(key: bytes = b"integration-key"):
    """The real ``Redactor`` when the redaction module is present, else the test double."""
    if real_redactor_available():
        from toolwatch.instrumentation.redact import Redactor

        return Redactor(key)
    return RedactorDouble(key)


async def flush(provider) -> None:
    """force_flush blocks on the exporter, whose HTTP request needs this loop: run it off-loop."""
    await asyncio.to_thread(provider.force_flush)


def proxy_command(*proxy_args: str) -> list[str]:
    """argv of ``toolwatch proxy`` through its CLI code path (test redactor if the real one is absent)."""
    if real_redactor_available():
        return [sys.executable, "-m", "toolwatch.instrumentation.proxy", *proxy_args]
    return [sys.executable, str(HELPERS / "proxy_with_double.py"), *proxy_args]


def demo_server(name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "toolwatch.demo.servers", name, *extra]
