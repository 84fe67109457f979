"""What every dialect module provides: a recogniser and two small extraction results."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from .attrs import Attrs


@dataclass(slots=True)
class CallShape:
    """Where one dialect keeps a tool call's essentials; raw ``args_text`` is redacted later."""

    tool: str
    args_text: str = ""
    args_redacted: bool = False
    """True only when the emitter says it redacted (toolwatch's ``toolwatch.redacted``)."""
    server: str = ""
    server_address: str = ""
    session_id: str = ""
    error_type: str = ""


@dataclass(slots=True)
class ListingShape:
    """A tools/list span: the JSON text holding the tool list, and the server it came from."""

    definitions_text: str
    server: str = ""


class Dialect(ABC):
    name: str = ""
    marker_keys: tuple[str, ...] = ()
    """Attribute keys whose presence may make a span this dialect's tool span."""

    @abstractmethod
    def call(self, span: Any, attrs: Attrs) -> CallShape | None:
        """A ``CallShape`` if this span is a tool call in this dialect, else None.

        A span the dialect claims but cannot use (no tool name) returns a shape with ``tool=''``
        so the normaliser rejects it with a message naming the missing key.
        """

    def listing(self, span: Any, attrs: Attrs) -> ListingShape | None:
        """A ``ListingShape`` if this span is a tools/list result in this dialect."""
        return None

    def missing_tool_message(self) -> str:
        return f"a {self.name} tool span without a tool name"
