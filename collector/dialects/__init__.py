"""Span attribute conventions ("dialects") the collector understands, one module each.

A dialect recognises tool-call and tool-list spans by their attributes (never by span name
alone) and says where the tool name, arguments and server are. The ``Normalizer`` asks each
dialect in ``DIALECTS`` order and builds the ``ToolCall``/``ToolListing`` itself, so redaction,
agent resolution and limits are decided in one place.
"""

from __future__ import annotations

from .base import CallShape, Dialect, ListingShape
from .contextforge import CONTEXTFORGE
from .genai import GENAI
from .openinference import OPENINFERENCE
from .openllmetry import OPENLLMETRY

DIALECTS: tuple[Dialect, ...] = (GENAI, OPENLLMETRY, OPENINFERENCE, CONTEXTFORGE)
"""Asked in this order; the first that claims a span wins (toolwatch's own keys come first)."""

MARKER_KEYS: frozenset[str] = frozenset(k for d in DIALECTS for k in d.marker_keys)
"""A span with none of these keys is not a tool span in any dialect: skipped without more work."""

__all__ = ["CallShape", "Dialect", "ListingShape", "DIALECTS", "MARKER_KEYS"]
