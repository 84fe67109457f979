"""The event loop toolwatch's own processes run on (the HTTP proxy, the OTLP worker processes)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop where it is installed (a cheaper event loop: the OTLP worker spent
    about 0.4 µs less CPU per span on it), else the default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
